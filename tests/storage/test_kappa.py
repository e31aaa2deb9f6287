"""UPDATE_KAPPA: κ set in place by O(1) overlay rows, seen by every read at once, folded at compaction, given by
the change feed and replayed; the κ index answers for rows whose κ moved after their segment was written."""

from __future__ import annotations

import numpy as np
import pytest

from t4dm.errors import InvalidInput, UnknownId
from t4dm.storage import T4DX, HNSWParams, Item, KappaUpdate

from .conftest import DIM, vec


def _kappas(db: T4DX, ids: list[str]) -> list[float]:
    return [db.get(id).kappa for id in ids]


def test_update_kappa_is_seen_by_every_read_wherever_the_rows_live(store) -> None:
    db = store.db
    ids = db.insert([Item(vec(i), kappa=0.1, fields={"text": f"t{i}"}) for i in range(4)])
    store.clock.advance()
    db.update_fields(ids[0], {"text": "t0, revised"})
    db = store.settle()
    store.clock.advance()
    assert db.update_kappa(ids[0], kappa=0.9) == 0.9
    assert db.update_kappa(ids[1], delta=0.3) == pytest.approx(0.4)
    assert db.update_kappas([(ids[2], 0.7), (ids[2], 0.7), (ids[3], -1.0)]) == pytest.approx([0.8, 1.0, 0.0])
    want = pytest.approx([0.9, 0.4, 1.0, 0.0])
    for settled in (False, True):
        db = store.settle() if settled else db
        assert _kappas(db, ids) == want
        assert sorted(i.id for i in db.scan(kappa=(0.85, 1.0))) == sorted([ids[0], ids[2]])
        assert db.count(kappa=(0.0, 0.05)) == 1
        hits = db.search(vec(2), k=4, kappa=(0.95, 1.0))
        assert [h.id for h in hits] == [ids[2]]
        # κ is not versioned: the revised item's first version keeps the κ it had; the live one moved
        assert [v.kappa for v in db.history(ids[0])] == pytest.approx([0.1, 0.9])
    db.update_fields(ids[1], {"text": "t1, revised"})  # a new version starts from the present κ
    assert db.get(ids[1]).kappa == pytest.approx(0.4)
    db.compact()  # folds the overlays into the items: they stay
    assert _kappas(db, ids) == want and db.count(kappa=(0.85, 1.0)) == 2


def test_update_kappa_reopens_and_survives_the_log(tmp_path, clock) -> None:
    path = str(tmp_path / "s")
    with T4DX.open(path, dim=DIM, clock=clock) as db:
        ids = db.insert([Item(vec(i), kappa=0.2) for i in range(3)])
        db.flush()
        db.update_kappa(ids[0], kappa=0.6)  # its target in a segment, the overlay in the log
        db.flush()
        db.update_kappa(ids[0], delta=0.1)  # the later overlay wins at reopen, whatever holds it
        db.update_kappa(ids[1], kappa=0.9)
    with T4DX.open(path, clock=clock) as db:
        assert _kappas(db, ids) == pytest.approx([0.7, 0.9, 0.2])
        assert sorted(i.id for i in db.scan(kappa=(0.65, 1.0))) == sorted(ids[:2])
        db.compact()
    with T4DX.open(path, clock=clock) as db:
        assert _kappas(db, ids) == pytest.approx([0.7, 0.9, 0.2])


def test_the_kappa_index_answers_for_moved_rows(tmp_path, clock) -> None:
    """A segment's κ index is written with it; rows whose κ an overlay moved are checked on their present κ,
    so a κ range finds every row in it and no other (against a filter over every item), on the exact and the
    HNSW search paths."""
    rng = np.random.default_rng(7)
    n = 300
    params = HNSWParams(min_rows=64)
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock, hnsw=params, index_build="sync") as db:
        ids = db.insert_batch(rng.standard_normal((n, DIM)).astype(np.float32), kappa=rng.random(n))
        db.flush()
        moved = rng.choice(n, 80, replace=False)
        db.update_kappas(
            [(ids[i], float(k)) for i, k in zip(moved, rng.random(80), strict=True)], absolute=True
        )
        for lo, hi in ((0.0, 0.1), (0.25, 0.5), (0.5, 0.5), (0.9, 1.0), (0.0, 1.0)):
            want = sorted(i.id for i in db.scan() if lo <= i.kappa <= hi)
            assert sorted(i.id for i in db.scan(kappa=(lo, hi))) == want
            hits = db.search(vec(1), k=n, kappa=(lo, hi), exact=True)
            assert sorted(h.id for h in hits) == want
            assert {h.id for h in db.search(vec(1), k=10, kappa=(lo, hi))} <= set(want)


def test_kappa_changes_replay_to_the_same_kappa(tmp_path, clock) -> None:
    with T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader:
        ids = leader.insert([Item(vec(i), kappa=0.1) for i in range(3)])
        clock.advance()
        leader.update_kappas([(ids[0], 0.5), (ids[1], 0.25)], absolute=True)
        clock.advance()
        leader.update_kappa(ids[0], delta=0.25)
        changes = list(leader.changes())
        kappas = [c for c in changes if c.op == "kappa"]
        assert [(c.record.id, c.record.kappa) for c in kappas] == [
            (ids[0], 0.5),
            (ids[1], 0.25),
            (ids[0], 0.75),
        ]
        assert all(isinstance(c.record, KappaUpdate) for c in kappas)
        assert (
            kappas[0].recorded_at == kappas[1].recorded_at < kappas[2].recorded_at
        )  # one transaction, then one
        want = _kappas(leader, ids)
    clock.advance()
    with T4DX.open(str(tmp_path / "copy"), dim=DIM, clock=clock) as copy:
        assert copy.replay(changes) == 3
        assert _kappas(copy, ids) == want
        assert [c.record for c in copy.changes() if c.op == "kappa"] == [c.record for c in kappas]


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda db, ids: db.update_kappa(ids[0]), InvalidInput, "delta"),
        (lambda db, ids: db.update_kappa(ids[0], kappa=0.5, delta=0.1), InvalidInput, "delta"),
        (lambda db, ids: db.update_kappas([(ids[0], 0.5), (ids[1], 1.5)], absolute=True), InvalidInput,
         "updates[1].kappa"),
        (lambda db, ids: db.update_kappas([(ids[0], 0.5), (ids[1], float("nan"))]), InvalidInput, "updates[1].delta"),
        (lambda db, ids: db.update_kappas([(ids[0], 0.5), (ids[1], True)]), InvalidInput, "updates[1].delta"),
        (lambda db, ids: db.update_kappas([(ids[0], 0.5), "x"]), InvalidInput, "updates[1]"),
        (lambda db, ids: db.update_kappas([(ids[0], 0.5), (7, 0.5)]), InvalidInput, "updates[1].id"),
        (lambda db, ids: db.update_kappas([(ids[0], 0.5), ("nobody", 0.5)]), UnknownId, "updates[1].id"),
        (lambda db, ids: db.update_kappas([(ids[0], 0.5), (ids[2], 0.5)]), UnknownId, "updates[1].id"),  # deleted
    ],
)  # fmt: skip
def test_a_bad_kappa_update_names_itself_and_writes_nothing(db, call, error, field) -> None:
    ids = db.insert([Item(vec(i), kappa=0.2) for i in range(3)])
    db.delete(ids[2])
    before = list(db.changes())
    with pytest.raises(error) as info:
        call(db, ids)
    assert info.value.field == field
    assert list(db.changes()) == before and _kappas(db, ids[:2]) == [0.2, 0.2]
