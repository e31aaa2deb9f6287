"""Property-based test: random operation sequences against a plain-dict model of a bitemporal store,
with flushes, compactions and reopens interleaved."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from t4dm.errors import UnknownId
from t4dm.storage import T4DX, UTC, Item

from .conftest import FakeClock, vec

DIM = 8
IDS = st.sampled_from(["a", "b", "c", "d", "e", "f"])
KINDS = st.sampled_from(["episode", "entity", "prototype"])
USERS = st.sampled_from(["alice", "bob"])
T0 = datetime(2025, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)


@dataclass
class Version:
    seed: int
    kappa: float
    kind: str
    fields: dict
    valid_from: datetime
    valid_to: datetime | None
    recorded_at: datetime
    superseded_at: datetime | None = None
    tombstone: bool = False


class StoreMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="t4dx-model-")
        self.clock = FakeClock(T0)
        self.model: dict[str, list[Version]] = {}
        self.last: datetime = T0 - _US
        self.checkpoints: list[datetime] = []

    @initialize(memtable_bytes=st.sampled_from([200, 1024, 4096, 1 << 20]), max_segments=st.integers(1, 4))
    def open_store(self, memtable_bytes: int, max_segments: int) -> None:
        # 200 bytes: batches of 4 rows (128 bytes of vectors) take the direct-ingest path
        self.options = {"memtable_bytes": memtable_bytes, "max_segments": max_segments}
        self.db = T4DX.open(self.dir + "/s", dim=DIM, clock=self.clock, durability="none", **self.options)

    def teardown(self) -> None:
        self.db.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    # ------------------------------------------------------------ model helpers
    def _tick(self) -> datetime:
        self.last = max(self.clock.now, self.last + _US)
        return self.last

    def _live(self, id: str) -> Version | None:
        versions = self.model.get(id)
        if versions and not versions[-1].tombstone:
            return versions[-1]
        return None

    def _append(self, id: str, version: Version) -> None:
        versions = self.model.setdefault(id, [])
        if versions:
            versions[-1].superseded_at = version.recorded_at
        versions.append(version)

    # ------------------------------------------------------------ rules
    @rule(seconds=st.sampled_from([0, 0, 0.5, 3]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        self.checkpoints.append(self.clock.now)

    @rule(
        rows=st.lists(
            st.tuples(
                IDS, st.integers(0, 10**6), st.floats(0, 1), KINDS, USERS, st.integers(-3, 3), st.booleans()
            ),
            min_size=1,
            max_size=4,
        )
    )
    def insert(self, rows) -> None:
        items = []
        for id, seed, kappa, kind, user, days, bounded in rows:
            valid_from = T0 + timedelta(days=days)
            valid_to = valid_from + timedelta(days=2) if bounded else None
            items.append(
                Item(
                    vector=vec(seed),
                    id=id,
                    kappa=kappa,
                    kind=kind,
                    fields={"user_id": user, "seed": seed},
                    valid_from=valid_from,
                    valid_to=valid_to,
                )
            )
        assert self.db.insert(items) == [r[0] for r in rows]
        recorded = self._tick()
        for item, (_, seed, *_rest) in zip(items, rows, strict=False):
            self._append(
                item.id,
                Version(
                    seed, item.kappa, item.kind, dict(item.fields), item.valid_from, item.valid_to, recorded
                ),
            )

    @rule(id=IDS, note=st.integers(0, 9), kappa=st.none() | st.floats(0, 1))
    def update(self, id: str, note: int, kappa: float | None) -> None:
        live = self._live(id)
        if live is None:
            try:
                self.db.update_fields(id, {"note": note}, kappa=kappa)
            except UnknownId:
                return
            raise AssertionError("update of a missing id did not raise")
        self.db.update_fields(id, {"note": note}, kappa=kappa)
        recorded = self._tick()
        self._append(
            id,
            Version(
                live.seed,
                live.kappa if kappa is None else kappa,
                live.kind,
                {**live.fields, "note": note},
                live.valid_from,
                live.valid_to,
                recorded,
            ),
        )

    @rule(id=IDS)
    def delete(self, id: str) -> None:
        live = self._live(id)
        if live is None:
            try:
                self.db.delete(id)
            except UnknownId:
                return
            raise AssertionError("delete of a missing id did not raise")
        self.db.delete(id)
        recorded = self._tick()
        self._append(
            id,
            Version(
                live.seed, live.kappa, live.kind, {}, live.valid_from, live.valid_to, recorded, tombstone=True
            ),
        )

    @rule()
    def flush(self) -> None:
        self.db.flush()

    @rule()
    def compact(self) -> None:
        self.db.compact()

    @rule()
    def reopen(self) -> None:
        self.db.close()
        self.db = T4DX.open(self.dir + "/s", clock=self.clock, durability="none", **self.options)

    @rule()
    def replayed_copy_matches(self) -> None:
        """The store's changes replayed into a new store: the copy answers every check as the model says."""
        folder = tempfile.mkdtemp(prefix="t4dx-copy-")
        try:
            copy_clock = FakeClock(max(self.clock.now, self.last))  # bursts run the store ahead of the clock
            with T4DX.open(folder + "/c", dim=DIM, clock=copy_clock, durability="none") as copy:
                copy.replay(self.db.changes())
                original, self.db = self.db, copy
                try:
                    self.gets_and_histories_match()
                    self.scans_match()
                    if self.checkpoints:
                        self.time_travel_matches()
                finally:
                    self.db = original
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    # ------------------------------------------------------------ checks
    def _check_item(self, item: Item, id: str, v: Version, open_at: datetime | None = None) -> None:
        assert item.id == id
        assert item.kind == v.kind and item.kappa == v.kappa and item.fields == v.fields
        np.testing.assert_array_equal(item.vector, vec(v.seed))
        assert (item.valid_from, item.valid_to) == (v.valid_from, v.valid_to)
        assert item.recorded_at == v.recorded_at
        assert item.superseded_at == v.superseded_at

    @invariant()
    def gets_and_histories_match(self) -> None:
        if not hasattr(self, "db"):
            return
        for id in "abcdef":
            live = self._live(id)
            got = self.db.get(id)
            if live is None:
                assert got is None, id
            else:
                self._check_item(got, id, live)
            history = self.db.history(id)
            expected = [v for v in self.model.get(id, []) if not v.tombstone]
            assert len(history) == len(expected), id
            for item, v in zip(history, expected, strict=False):
                self._check_item(item, id, v)

    @invariant()
    def scans_match(self) -> None:
        if not hasattr(self, "db"):
            return
        live = {id: self._live(id) for id in self.model if self._live(id) is not None}
        assert sorted(i.id for i in self.db.scan()) == sorted(live)
        assert len(self.db) == len(live)
        alice = sorted(id for id, v in live.items() if v.fields["user_id"] == "alice")
        assert sorted(i.id for i in self.db.scan(where={"user_id": "alice"})) == alice
        low = sorted(id for id, v in live.items() if v.kappa <= 0.5 and v.kind == "episode")
        assert sorted(i.id for i in self.db.scan(kappa=(0.0, 0.5), kind="episode")) == low
        day = T0 + timedelta(days=1, hours=12)
        valid = sorted(
            id for id, v in live.items() if v.valid_from <= day and (v.valid_to is None or day < v.valid_to)
        )
        assert sorted(i.id for i in self.db.scan(valid_at=day)) == valid

    @precondition(lambda self: bool(getattr(self, "checkpoints", None)))
    @invariant()
    def time_travel_matches(self) -> None:
        for at in self.checkpoints[-3:]:
            known = {}
            for id, versions in self.model.items():
                for v in versions:
                    visible = v.recorded_at <= at and (v.superseded_at is None or at < v.superseded_at)
                    if visible and not v.tombstone:
                        known[id] = v
            assert sorted(i.id for i in self.db.scan(known_at=at)) == sorted(known)
            for id in "abcdef":
                got = self.db.get(id, as_of=at)
                if id in known:
                    self._check_item(got, id, known[id])
                else:
                    assert got is None


StoreMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestStoreModel = StoreMachine.TestCase
