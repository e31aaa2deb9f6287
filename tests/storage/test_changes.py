"""The change feed (``T4DX.changes``) and its replay (``T4DX.replay``): a store's history copied into
another store at its own transaction times."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from datetime import timedelta

import numpy as np
import pytest

from t4dm.errors import DimensionMismatch, InvalidInput, InvalidTime, UnknownId
from t4dm.storage import T4DX, Change, Edge, Item, KappaUpdate, MergedRows, WeightScale

from .conftest import DIM, FakeClock, vec

_HALF = timedelta(milliseconds=500)


def _write_history(db: T4DX, clock: FakeClock) -> list[str]:
    """Every sort of write, one second apart: inserts, an update, edges, a weight update, a scale, a
    deletion, an edge removal, a re-insert of a deleted id, a bulk insert."""
    ids = db.insert(
        [Item(vec(i), fields={"text": f"fact {i}", "user_id": "u1"}, kappa=0.1 * i) for i in range(5)]
    )
    clock.advance()
    db.update_fields(ids[0], {"text": "fact 0, revised"}, kappa=0.9)
    clock.advance()
    db.add_edges([Edge(ids[0], ids[1], weight=2.0), Edge(ids[1], ids[2], rel="next"), Edge(ids[2], ids[3])])
    clock.advance()
    db.update_edge_weight(ids[0], ids[1], delta=0.5)
    db.batch_scale_weights(0.5, rel="next")
    clock.advance()
    db.delete([ids[3], ids[4]])
    clock.advance()
    db.remove_edges(ids[1], ids[2], "next")
    clock.advance()
    db.insert(Item(vec(40), id=ids[4], kind="entity", fields={"text": "fact 4 again"}))
    clock.advance()
    more = db.insert_batch(
        np.stack([vec(100 + i) for i in range(6)]), [{"text": f"bulk {i}"} for i in range(6)]
    )
    clock.advance()
    db.add_edges(Edge(more[0], ids[0], rel="derived_from"))
    clock.advance()
    return ids + more


def _views(db: T4DX, ids: list[str], times: list) -> dict:
    """Everything a reader can ask of the store's history, in comparable form."""

    def edge_rows(edges: list[Edge]) -> list[tuple]:
        return sorted(
            (e.src, e.dst, e.rel, e.weight, e.valid_from, e.valid_to, e.recorded_at, e.superseded_at)
            for e in edges
        )

    def item_row(item: Item | None) -> tuple | None:
        if item is None:
            return None
        return (item.id, item.kind, item.kappa, item.fields, item.valid_from, item.valid_to, item.recorded_at,
                item.superseded_at, item.vector.tobytes())  # fmt: skip

    views: dict = {"live": sorted(item_row(i) for i in db.scan()), "edges": edge_rows(db.edges(ids))}
    for id in ids:
        views[f"history {id}"] = [item_row(i) for i in db.history(id)]
    for t in times:
        views[f"scan {t}"] = sorted(item_row(i) for i in db.scan(known_at=t))
        views[f"get {t}"] = [item_row(db.get(id, as_of=t)) for id in ids]
        views[f"edges {t}"] = edge_rows(db.edges(ids, known_at=t))
        views[f"in-edges {t}"] = edge_rows(db.edges(ids, direction="in", known_at=t))
    return views


def _times(changes: list[Change]) -> list:
    recorded = sorted({c.recorded_at for c in changes})
    return recorded + [t + _HALF for t in recorded] + [recorded[0] - _HALF]


def test_a_replay_into_an_empty_store_gives_the_same_history(store, tmp_path) -> None:
    db = store.db
    ids = _write_history(db, store.clock)
    db = store.settle()
    changes = list(db.changes())
    assert [c.seq for c in changes] == sorted(c.seq for c in changes)
    # a full compaction folds weight updates and scales into the edges: no changes of their own then
    folded = store.place == "compacted"
    assert {c.op for c in changes} == {"put", "delete"} | (set() if folded else {"weight", "scale"})
    times = _times(changes)
    before = _views(db, ids, times)

    with T4DX.open(str(tmp_path / "copy"), dim=DIM, clock=store.clock) as copy:
        assert copy.replay(changes) == len({c.recorded_at for c in changes})
        assert _views(copy, ids, times) == before
        again = list(copy.changes())
        assert [dataclasses.replace(c, seq=0) for c in again] == [
            dataclasses.replace(c, seq=0) for c in changes
        ]
    with T4DX.open(str(tmp_path / "copy"), clock=store.clock) as reopened:  # from its log and segments
        assert _views(reopened, ids, times) == before
        store.clock.advance()
        [late] = reopened.insert(Item(vec(7), fields={"text": "after the replay"}))
        assert reopened.get(late).recorded_at == store.clock.now > changes[-1].recorded_at


def test_the_changes_record_deletions_and_ended_edges(db, clock) -> None:
    ids = _write_history(db, clock)
    changes = list(db.changes())
    deleted = [c.record.id for c in changes if c.op == "delete" and isinstance(c.record, Item)]
    assert deleted == [ids[3], ids[4]]
    [removed] = [c.record for c in changes if c.op == "delete" and isinstance(c.record, Edge)]
    assert (removed.src, removed.dst, removed.rel) == (ids[1], ids[2], "next")
    # weights are not versions: the put has the edge's weight now (2.0 + 0.5), less the scales written after
    # it (none of its relation); the weight update and the scale follow as changes of their own
    first, weighed = [c for c in changes if isinstance(c.record, Edge) and c.record.src == ids[0]]
    assert (first.op, first.record.weight, weighed.op, weighed.record.weight) == ("put", 2.5, "weight", 2.5)
    assert (weighed.record.dst, weighed.record.rel) == (ids[1], "related")
    [scale] = [c for c in changes if c.op == "scale"]
    assert (scale.record.factor, scale.record.rel, scale.seq) == (0.5, "next", weighed.seq + 1)
    assert scale.recorded_at > weighed.recorded_at
    puts = [c for c in changes if c.op == "put" and isinstance(c.record, Item)]
    assert len(puts) == 5 + 1 + 1 + 6
    one_transaction = [c for c in changes if c.recorded_at == changes[0].recorded_at]
    assert [c.record.id for c in one_transaction] == ids[:5]


def test_changes_since_a_time(db, clock) -> None:
    ids = _write_history(db, clock)
    changes = list(db.changes())
    cut = changes[6].recorded_at
    later = list(db.changes(since=cut))
    assert later == [c for c in changes if c.recorded_at > cut]
    assert later and all(c.recorded_at > cut for c in later)
    assert list(db.changes(since=clock.now)) == []
    assert ids  # the history was written
    with pytest.raises(InvalidTime, match="since"):
        list(db.changes(since=cut.replace(tzinfo=None)))


@pytest.fixture
def source(tmp_path, clock) -> list[Change]:
    with T4DX.open(str(tmp_path / "source"), dim=DIM, clock=clock) as db:
        _write_history(db, clock)
        return list(db.changes())


def _unchanged(db: T4DX) -> None:
    assert list(db.changes()) == [] and len(db) == 0


def test_a_replay_must_begin_after_the_stores_last_write(tmp_path, clock, source) -> None:
    with T4DX.open(str(tmp_path / "later"), dim=DIM, clock=clock) as db:
        [id] = db.insert(Item(vec(1), fields={"text": "written after the source's history"}))
        with pytest.raises(
            InvalidTime, match=r"changes\[0\]\.recorded_at.*later than this store's last write"
        ):
            db.replay(source)
        assert [c.record.id for c in db.changes()] == [id]


def test_a_replay_refuses_times_ahead_of_the_clock(tmp_path, source) -> None:
    early = FakeClock(source[0].recorded_at + _HALF)
    with T4DX.open(str(tmp_path / "early"), dim=DIM, clock=early) as db:
        with pytest.raises(InvalidTime, match=r"changes\[\d+\]\.recorded_at.*ahead of the clock"):
            db.replay(source)
        _unchanged(db)


def test_a_replay_refuses_falling_times(tmp_path, clock, source) -> None:
    changes = [source[0], source[6], source[5]]
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        with pytest.raises(InvalidTime, match=r"changes\[2\]\.recorded_at.*must rise"):
            db.replay(changes)
        _unchanged(db)


def test_a_replay_refuses_two_sorts_in_one_transaction(tmp_path, clock, source) -> None:
    first = source[0]
    edge = Edge(first.record.id, source[1].record.id, recorded_at=first.recorded_at)
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        with pytest.raises(InvalidInput, match=r"changes\[1\]=.*one sort of change"):
            db.replay([first, Change(0, "put", edge)])
        _unchanged(db)


def test_a_replay_refuses_a_deletion_of_what_is_not_live(tmp_path, clock, source) -> None:
    deletion = next(c for c in source if c.op == "delete" and isinstance(c.record, Item))
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        with pytest.raises(UnknownId, match=r"changes\[0\]\.record\.id"):
            db.replay([deletion])
        twice = [c for c in source if c.recorded_at <= deletion.recorded_at] + [
            dataclasses.replace(deletion, record=dataclasses.replace(deletion.record, recorded_at=clock.now))
        ]
        with pytest.raises(UnknownId, match=rf"changes\[{len(twice) - 1}\]\.record\.id"):
            db.replay(twice)
        _unchanged(db)


@pytest.mark.parametrize(
    ("change", "error", "field"),
    [
        ("not a change", InvalidInput, r"changes\[3\]="),
        (Change(0, "upsert", Item(vec(0), id="x")), InvalidInput, r"changes\[3\]\.op"),
        (Change(0, "put", Item(vec(0), id="x")), InvalidTime, r"changes\[3\]\.recorded_at"),
        ("short vector", DimensionMismatch, r"changes\[3\]\.record\.vector"),
        ("bad weight", InvalidInput, r"changes\[3\]\.record\.weight"),
        ("weight of an item", InvalidInput, r"changes\[3\]\.record=.*weight change needs an Edge"),
        ("scale of zero", InvalidInput, r"changes\[3\]\.record\.factor"),
        ("scale of '*'", InvalidInput, r"changes\[3\]\.record\.rel"),
        ("unknown edge weighed", UnknownId, r"changes\[3\]\.record"),
    ],
)
def test_a_bad_change_names_itself_and_writes_nothing(tmp_path, clock, source, change, error, field) -> None:
    late = source[-1].recorded_at + timedelta(seconds=1)
    if change == "short vector":
        change = Change(0, "put", Item(np.zeros(DIM - 1, np.float32), id="x", recorded_at=late))
    elif change == "bad weight":
        change = Change(
            0, "put", Edge(source[0].record.id, source[1].record.id, weight=float("nan"), recorded_at=late)
        )
    elif change == "weight of an item":
        change = Change(0, "weight", Item(vec(0), id="x", recorded_at=late))
    elif change == "scale of zero":
        change = Change(0, "scale", WeightScale(0.0, recorded_at=late))
    elif change == "scale of '*'":
        change = Change(0, "scale", WeightScale(0.5, "*", recorded_at=late))
    elif change == "unknown edge weighed":
        change = Change(
            0, "weight", Edge(source[0].record.id, source[1].record.id, weight=3.0, recorded_at=late)
        )
    elif not isinstance(change, str) and change.op == "upsert":
        change = dataclasses.replace(change, record=dataclasses.replace(change.record, recorded_at=late))
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        with pytest.raises(error, match=field):
            db.replay([*source[:3], change])
        _unchanged(db)


def test_a_follower_kept_up_by_changes_since_its_last_replay(tmp_path, clock) -> None:
    """Incremental copying: replaying ``changes(since=the follower's last change)`` in rounds gives the
    leader's history, as one replay of everything does."""
    with (
        T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader,
        T4DX.open(str(tmp_path / "follower"), dim=DIM, clock=clock) as follower,
    ):
        ids = _write_history(leader, clock)
        last = None
        for round in range(3):
            if round:
                clock.advance()
                leader.update_fields(ids[round], {"round": round})
                clock.advance()
                leader.delete(ids[5 + round])
                clock.advance()
                # weights are not versions: the follower gets them as weight and scale changes
                leader.update_edge_weight(ids[0], ids[1], delta=0.25 * round)
                clock.advance()
                leader.batch_scale_weights(0.5)
                clock.advance()
                leader.flush()
            batch = list(leader.changes(since=last))
            assert batch and all(last is None or c.recorded_at > last for c in batch)
            follower.replay(batch)
            last = batch[-1].recorded_at
        changes = list(leader.changes())
        times = _times(changes)
        assert _views(follower, ids, times) == _views(leader, ids, times)
        assert follower.replay(leader.changes(since=last)) == 0  # nothing new


def _consolidation(id: str, seed: int, sources: list[str]):
    """A policy as consolidation's NREM and REM: every live item's κ up by 0.25, and a prototype version of
    ``id`` derived from ``sources``."""

    def policy(rows: MergedRows) -> None:
        live = rows.is_current & rows.is_item
        rows.kappa[live] = np.minimum(1.0, rows.kappa[live] + 0.25)
        rows.add(Item(vec(seed), id=id, kind="prototype", kappa=0.85, fields={"text": f"{id} p"}), sources)

    return policy


@pytest.mark.parametrize("examples", [50, pytest.param(400, marks=pytest.mark.slow)])
def test_random_histories_replay_to_the_same_views(tmp_path, examples) -> None:
    """Hypothesis: random sequences of inserts, revisions, deletions, edges, removals, weight updates,
    scales, κ updates, erasures and consolidating compactions, with flushes, compactions and reopens between, replay into an empty store with the same views at
    every transaction time; and a follower that syncs at random points (``changes(since=)``, or a new copy
    when a compaction folded what it had not seen) ends with the same views."""
    import shutil

    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    ids = [f"n{i}" for i in range(5)]
    step = st.one_of(
        st.tuples(st.just("insert"), st.sampled_from(ids), st.integers(0, 50)),
        st.tuples(st.just("revise"), st.sampled_from(ids), st.integers(0, 9)),
        st.tuples(st.just("delete"), st.sampled_from(ids), st.just(0)),
        st.tuples(st.just("link"), st.sampled_from(ids), st.sampled_from(ids)),
        st.tuples(st.just("unlink"), st.sampled_from(ids), st.sampled_from(ids)),
        st.tuples(st.just("weigh"), st.sampled_from(ids), st.sampled_from(ids)),
        st.tuples(st.just("scale"), st.just(""), st.just(0)),
        st.tuples(st.just("kappa"), st.sampled_from(ids), st.integers(0, 10)),
        st.tuples(st.just("erase"), st.sampled_from(ids), st.just(0)),
        st.tuples(st.just("consolidate"), st.sampled_from(ids), st.integers(0, 50)),
        st.tuples(st.just("flush"), st.just(""), st.just(0)),
        st.tuples(st.just("compact"), st.just(""), st.just(0)),
        st.tuples(st.just("reopen"), st.just(""), st.just(0)),
        st.tuples(st.just("sync"), st.just(""), st.just(0)),
    )
    runs = iter(range(10**6))

    @settings(
        max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(st.lists(step, min_size=1, max_size=25))
    def check(steps) -> None:
        folder = tmp_path / f"run{next(runs)}"
        clock = FakeClock()
        copies = iter(range(10**6))
        follower, last = T4DX.open(str(folder / "f0"), dim=DIM, clock=clock), None

        def sync() -> None:
            nonlocal follower, last
            try:
                batch = list(db.changes(since=last))
            except InvalidTime:  # folded before the follower saw it: a new copy
                follower.close()
                follower = T4DX.open(str(folder / f"f{next(copies) + 1}"), dim=DIM, clock=clock)
                last = db.folded_through  # read before the copy, which holds what the folds took in
                batch = list(db.changes())
                follower.replay(batch)
                last = max(last, batch[-1].recorded_at) if batch else last
                assert list(db.changes(since=last)) == []  # and the follower goes on from there
                return
            follower.replay(batch)
            last = batch[-1].recorded_at if batch else last

        db = T4DX.open(str(folder / "a"), dim=DIM, clock=clock)
        try:
            # every id and a chain of edges to begin with, so that the steps have edges to weigh and unlink
            db.insert([Item(vec(i), id=id, fields={"text": id}) for i, id in enumerate(ids)])
            clock.advance()
            db.add_edges([Edge(a, b, weight=2.0) for a, b in itertools.pairwise(ids)])
            # the weights the leader must report, kept apart from the engine (edges outlive their items)
            model = {(a, b, "related"): 2.0 for a, b in itertools.pairwise(ids)}
            for op, a, b in steps:
                clock.advance()
                live = {i.id for i in db.scan()}
                if op == "insert":
                    db.insert(Item(vec(b), id=a, fields={"text": f"{a} {b}"}))
                elif op == "revise" and a in live:
                    db.update_fields(a, {"rev": b})
                elif op == "delete" and a in live:
                    db.delete(a)
                elif op == "link" and a in live and b in live:
                    db.add_edges(Edge(a, b, weight=1.0 + len(live)))
                    model[a, b, "related"] = 1.0 + len(live)
                elif op in ("unlink", "weigh") and (a, b, "related") in model:
                    if op == "unlink":
                        db.remove_edges(a, b)
                        del model[a, b, "related"]
                    else:
                        db.update_edge_weight(a, b, delta=0.25)
                        model[a, b, "related"] += 0.25
                elif op == "scale":
                    db.batch_scale_weights(0.5)
                    model = {edge: weight * 0.5 for edge, weight in model.items()}
                elif op == "kappa" and a in live:
                    db.update_kappa(a, kappa=b / 10)
                elif op == "erase":
                    with contextlib.suppress(UnknownId):  # no row of it left: erased before
                        db.erase(a)
                        model = {e: w for e, w in model.items() if a not in e[:2]}  # its edges go with it
                elif op == "consolidate":
                    sources = sorted(live - {a})[:2]
                    linked = {(a, s_, "derived_from") for s_ in sources}
                    db.compact(policy=_consolidation(a, b, sources))
                    clock.advance()  # its transactions run microseconds ahead of this clock, which stands still
                    model = {e: w for e, w in model.items() if e not in linked} | dict.fromkeys(linked, 1.0)
                elif op == "flush":
                    db.flush()
                elif op == "compact":
                    db.compact()
                elif op == "reopen":
                    db.close()
                    db = T4DX.open(str(folder / "a"), clock=clock)
                    assert _weights(db, ids) == pytest.approx(model)
                elif op == "sync":
                    sync()
            assert _weights(db, ids) == pytest.approx(model)
            changes = list(db.changes())
            times = _times(changes)
            want = _views(db, ids, times)
            with T4DX.open(str(folder / "b"), dim=DIM, clock=clock) as copy:
                copy.replay(changes)
                assert _views(copy, ids, times) == want
            sync()
            # a follower's history holds what it saw, so compare its present: items and weights
            assert _views(follower, ids, [])["live"] == want["live"]
            assert _weights(follower, ids) == pytest.approx(_weights(db, ids))
        finally:
            db.close()
            follower.close()
        shutil.rmtree(folder, ignore_errors=True)

    check()


def test_one_transaction_cannot_delete_the_same_thing_twice(tmp_path, clock, source) -> None:
    item_deletion = next(c for c in source if c.op == "delete" and isinstance(c.record, Item))
    edge_removal = next(c for c in source if c.op == "delete" and isinstance(c.record, Edge))
    for deletion in (item_deletion, edge_removal):
        before = [c for c in source if c.recorded_at < deletion.recorded_at]
        changes = [*before, deletion, deletion]  # the same recorded_at: one transaction
        with T4DX.open(str(tmp_path / f"s{len(before)}"), dim=DIM, clock=clock) as db:
            with pytest.raises(UnknownId, match=rf"changes\[{len(changes) - 1}\]"):
                db.replay(changes)
            _unchanged(db)


def test_two_scales_are_two_transactions(tmp_path, clock, source) -> None:
    late = source[-1].recorded_at + timedelta(seconds=1)
    scales = [
        Change(0, "scale", WeightScale(0.5, recorded_at=late)),
        Change(0, "scale", WeightScale(0.5, recorded_at=late)),
    ]
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        with pytest.raises(InvalidInput, match=r"changes\[\d+\]=.*a batch scale is a transaction of its own"):
            db.replay([*source, *scales])
        _unchanged(db)


def _weights(db: T4DX, ids: list[str]) -> dict:
    return {(e.src, e.dst, e.rel): e.weight for e in db.edges(ids)}


def test_a_compaction_that_folds_weights_ends_the_feed_before_them(tmp_path, clock) -> None:
    """A full compaction folds overlays and scales into the edges: a follower that has not seen them must
    copy anew (``since`` before them is refused); one that has goes on; a new copy gets the same weights."""
    with (
        T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader,
        T4DX.open(str(tmp_path / "follower"), dim=DIM, clock=clock) as follower,
    ):
        ids = _write_history(leader, clock)
        follower.replay(leader.changes())
        synced = list(leader.changes())[-1].recorded_at
        assert leader.folded_through is None
        leader.compact()  # folds what the follower has seen: it need not copy anew
        assert leader.folded_through is not None and leader.folded_through <= synced
        assert list(leader.changes(since=synced)) == []
        clock.advance()
        leader.update_edge_weight(ids[0], ids[1], delta=1.0)
        clock.advance()
        leader.batch_scale_weights(0.5, rel="derived_from")
        clock.advance()
        unseen = list(leader.changes())[-1].recorded_at
        assert leader.stats()["unfolded_scales"] == 1
        leader.compact()  # folds the two changes the follower has not seen
        assert leader.folded_through == unseen
        stats = leader.stats()
        assert (stats["folded_through"], stats["unfolded_scales"], stats["edge_scales"]) == (
            unseen.isoformat(),
            0,
            {},
        )
        with pytest.raises(InvalidTime, match=r"since=.*copy the store anew"):
            list(leader.changes(since=synced))
        assert _weights(follower, ids) != _weights(leader, ids)
    with T4DX.open(str(tmp_path / "leader"), clock=clock) as leader:  # the mark is kept
        assert leader.folded_through == unseen
        with pytest.raises(InvalidTime, match="since"):
            list(leader.changes(since=synced))
        assert list(leader.changes(since=unseen)) == []
        with T4DX.open(str(tmp_path / "copy"), dim=DIM, clock=clock) as copy:
            copy.replay(leader.changes())
            assert _weights(copy, ids) == pytest.approx(_weights(leader, ids))
            assert {c.op for c in copy.changes()} == {"put", "delete"}


def test_a_policys_kappa_edits_on_live_items_reach_a_follower(tmp_path, clock) -> None:
    """κ a compaction policy sets on live items (consolidation's NREM and REM) is written as κ overlays, and an
    id it drops whole (PRUNE) as an erasing tombstone, which the feed gives: a follower keeps up without a new
    copy. κ of an old version, or some versions of an id dropped, the feed cannot give: those end it at the
    compaction."""
    with (
        T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader,
        T4DX.open(str(tmp_path / "follower"), dim=DIM, clock=clock) as follower,
    ):
        ids = leader.insert([Item(vec(i), kappa=0.1) for i in range(4)])
        clock.advance()
        leader.update_fields(ids[0], {"text": "revised"})
        clock.advance()
        leader.compact(policy=lambda rows: None)  # edits nothing, folds nothing: the feed is whole
        assert leader.folded_through is None
        follower.replay(leader.changes())
        synced = list(leader.changes())[-1].recorded_at
        clock.advance()

        def nrem(rows: MergedRows) -> None:
            live = rows.is_current & rows.is_item
            rows.kappa[live] = np.linspace(0.2, 0.8, int(live.sum()))

        leader.compact(policy=nrem)
        assert leader.folded_through is None
        news = list(leader.changes(since=synced))
        assert {c.op for c in news} == {"kappa"} and len(news) == 4
        assert all(isinstance(c.record, KappaUpdate) for c in news)
        clock.advance()
        follower.replay(news)
        kappas = [leader.get(id).kappa for id in ids]
        assert sorted(kappas) == pytest.approx(np.linspace(0.2, 0.8, 4).tolist())  # the rows' (key) order
        for db in (leader, follower):
            assert [db.get(id).kappa for id in ids] == kappas
            assert db.history(ids[0])[0].kappa == 0.1  # the old version's κ stays
        assert sorted(i.id for i in follower.scan(kappa=(0.5, 1.0))) == sorted(
            i.id for i in leader.scan(kappa=(0.5, 1.0))
        )
        synced = news[-1].recorded_at

        def old_versions(rows: MergedRows) -> None:
            rows.kappa[~rows.is_current] = 0.9  # the revised item's first version: not a change to give

        clock.advance()
        leader.compact(policy=old_versions)
        assert leader.folded_through is not None and leader.folded_through > synced
        with pytest.raises(InvalidTime, match="since"):
            list(leader.changes(since=synced))
        synced = leader.folded_through

        def prune(rows: MergedRows) -> None:
            rows.keep[np.asarray(rows.ids) == ids[3]] = False  # every row of it: forgotten

        follower.close()
        follower = T4DX.open(str(tmp_path / "copy"), dim=DIM, clock=clock)
        follower.replay(leader.changes())
        clock.advance()
        leader.compact(policy=prune)
        assert leader.get(ids[3]) is None and leader.history(ids[3]) == []
        assert leader.folded_through == synced  # unmoved: the erasure is a change
        [erase] = leader.changes(since=synced)
        assert (erase.op, erase.record.id) == ("erase", ids[3])
        clock.advance()
        follower.replay([erase])
        assert follower.get(ids[3]) is None and len(follower.history(ids[3])) == 1  # until it compacts
        follower.compact()
        assert follower.history(ids[3]) == [] and len(follower) == len(leader) == 3

        def one_version(rows: MergedRows) -> None:
            rows.keep[(np.asarray(rows.ids) == ids[0]) & ~rows.is_current] = False  # some of its versions

        clock.advance()
        leader.compact(policy=one_version)
        assert leader.folded_through > synced and len(leader.history(ids[0])) == 1
        follower.close()


def test_a_store_from_before_the_scale_log_keeps_its_scales(tmp_path, clock) -> None:
    """A manifest written before the feed gave scales has their product only: those factors stay in every
    weight read, and the feed gives them inside the puts (no scale change to give)."""
    import msgpack

    from t4dm.storage import manifest as manifest_module
    from t4dm.storage.fsutil import read_framed, write_framed

    path = str(tmp_path / "old")
    with T4DX.open(path, dim=DIM, clock=clock) as db:
        a, b = db.insert([Item(vec(1)), Item(vec(2))])
        db.add_edges(Edge(a, b, weight=3.0))
        db.flush()
        db.batch_scale_weights(0.5)
        clock.advance()
        db.insert(Item(vec(3)))
        db.flush()  # the scale is in the manifest now
    name = f"{path}/{manifest_module.NAME}"
    version, body = read_framed(name, manifest_module._MAGIC, manifest_module.FORMAT)
    raw = msgpack.unpackb(body, raw=False)
    assert raw["edge_scales"] == {"*": 0.5} and raw["edge_scale_log"]
    for key in ("edge_scale_log", "edge_scale_base", "folded_through"):
        del raw[key]  # as an older version wrote it
    write_framed(name, manifest_module._MAGIC, version, msgpack.packb(raw, use_bin_type=True))
    with T4DX.open(path, clock=clock) as db:
        assert [e.weight for e in db.edges(a)] == [1.5]
        changes = list(db.changes())
        assert [c.record.weight for c in changes if isinstance(c.record, Edge)] == [1.5]
        assert not any(c.op == "scale" for c in changes)
        clock.advance()
        db.batch_scale_weights(2.0)  # a new scale joins the log on top of the old product
        assert [e.weight for e in db.edges(a)] == [3.0]
        with T4DX.open(str(tmp_path / "copy"), dim=DIM, clock=clock) as copy:
            copy.replay(db.changes())
            assert [e.weight for e in copy.edges(a)] == [3.0]
    with T4DX.open(path, clock=clock) as db:
        assert [e.weight for e in db.edges(a)] == [3.0]


def test_the_info_command_shows_the_scales_and_the_fold_mark(tmp_path, clock, capsys) -> None:
    import json

    from t4dm.cli import main

    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        a, b = db.insert([Item(vec(1)), Item(vec(2))])
        db.add_edges(Edge(a, b))
        db.batch_scale_weights(0.5, rel="related")
        assert main(["info", str(tmp_path / "s")]) == 0  # read-only, beside the open writer
    info = json.loads(capsys.readouterr().out)
    assert (info["edge_scales"], info["unfolded_scales"], info["folded_through"]) == (
        {"related": 0.5},
        1,
        None,
    )
    assert info["live_items"] == 2 and info["read_only"] is True
    assert main(["info", str(tmp_path / "nowhere")]) == 2
    assert "holds no T4DX store" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    with T4DX.open(str(tmp_path / "s"), clock=clock) as db:
        db.compact()
        folded = db.folded_through
    assert main(["info", str(tmp_path / "s")]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["edge_scales"], info["unfolded_scales"], info["folded_through"]) == (
        {},
        0,
        folded.isoformat(),
    )


def _prototype_policy(sources: list[str]):
    def rem(rows: MergedRows) -> None:
        rows.add(Item(vec(90), id="proto", kind="prototype", kappa=0.85), derived_from=sources)

    return rem


def test_a_store_with_a_policys_new_items_replays_into_an_empty_one(tmp_path, clock) -> None:
    """A compaction policy's new items and their provenance edges are two transactions (one sort of change
    each), so ``changes()`` of a consolidated store replays; before, the copy was refused."""
    with T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader:
        ids = leader.insert([Item(vec(i), fields={"text": f"episode {i}"}) for i in range(3)])
        clock.advance()
        leader.compact(policy=_prototype_policy(ids[:2]))
        changes = list(leader.changes())
        [proto] = [c for c in changes if isinstance(c.record, Item) and c.record.id == "proto"]
        links = [c for c in changes if isinstance(c.record, Edge)]
        assert [(e.record.src, e.record.rel) for e in links] == [("proto", "derived_from")] * 2
        assert all(e.recorded_at > proto.recorded_at for e in links)  # the transaction after the items'
        times = _times(changes)
        everything = [*ids, "proto"]
        before = _views(leader, everything, times)
        assert before[f"edges {proto.recorded_at}"] == []  # the items alone at their own time
    clock.advance()
    with T4DX.open(str(tmp_path / "copy"), dim=DIM, clock=clock) as copy:
        assert copy.replay(changes) == 3
        assert _views(copy, everything, times) == before
        assert set(copy.derived_from("proto")) == set(ids[:2])


def test_a_replay_splits_a_policys_items_and_provenance_written_as_one_transaction(tmp_path, clock) -> None:
    """Stores written before 2026-12-07 recorded a policy's new items and their provenance edges at one time:
    such a transaction replays as two, the edges 1 µs after the items. Any other mix stays refused."""
    with T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader:
        ids = leader.insert([Item(vec(i)) for i in range(2)])
        clock.advance()
        leader.compact(policy=_prototype_policy(ids))
        changes = list(leader.changes())
    clock.advance()
    [proto] = [c for c in changes if isinstance(c.record, Item) and c.record.id == "proto"]
    old = [
        dataclasses.replace(c, record=dataclasses.replace(c.record, recorded_at=proto.recorded_at))
        if isinstance(c.record, Edge)
        else c
        for c in changes
    ]
    with T4DX.open(str(tmp_path / "copy"), dim=DIM, clock=clock) as copy:
        assert copy.replay(old) == 3
        links = copy.edges("proto", rel="derived_from")
        assert sorted(e.dst for e in links) == sorted(ids)
        assert {e.recorded_at for e in links} == {proto.recorded_at + timedelta(microseconds=1)}
        assert copy.get("proto").recorded_at == proto.recorded_at
    related = dataclasses.replace(old[-1], record=dataclasses.replace(old[-1].record, rel="related"))
    for mixed in ([*old[:-2], related, old[-2]], [*old[:-1], related]):  # a related edge first, or after
        with T4DX.open(str(tmp_path / "refused"), dim=DIM, clock=clock) as refused:
            at = mixed.index(related)
            with pytest.raises(InvalidInput, match=rf"changes\[{at}\]=.*one sort of change"):
                refused.replay(mixed)
            _unchanged(refused)
