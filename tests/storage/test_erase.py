"""ERASE: an erasing tombstone hides an id at once, and the next full compaction drops every row of it, so no
read of any past time finds it; the change feed gives it, a follower replays it, and a version written after
it stays."""

from __future__ import annotations

import numpy as np
import pytest

from t4dm.errors import InvalidInput, UnknownId
from t4dm.storage import T4DX, Edge, Item, MergedRows

from .conftest import DIM, vec


def test_erase_hides_at_once_and_erases_at_the_next_full_compaction(store) -> None:
    db, clock = store.db, store.clock
    ids = db.insert([Item(vec(i), fields={"text": f"t{i}", "user_id": "u"}) for i in range(4)])
    first = clock.now
    clock.advance()
    db.update_fields(ids[0], {"text": "t0, revised"})
    db.add_edges([Edge(ids[0], ids[2]), Edge(ids[3], ids[0], "next"), Edge(ids[2], ids[3])])
    clock.advance()
    db.update_edge_weight(ids[0], ids[2], delta=0.5)  # an overlay row of an erased edge
    db.remove_edges(ids[3], ids[0], "next")  # a removed edge has a past to erase too
    with_edges = clock.now
    clock.advance()
    db.delete(ids[1])
    db = store.settle()
    clock.advance()
    db.erase([ids[0], ids[1]])  # one live, one deleted: both have a history to erase
    erased_at = clock.now
    for settled in (False, True):
        db = store.settle() if settled else db
        assert db.get(ids[0]) is None and db.get(ids[1]) is None and len(db) == 2
        assert sorted(i.id for i in db.scan()) == sorted(ids[2:])
        assert all(h.id not in ids[:2] for h in db.search(vec(0), k=4))
        # its edges go with it (every relation, both directions); an edge between others stays
        assert db.edges(ids[0]) == [] and db.edges(ids[0], direction="in") == []
        assert [(e.src, e.dst) for e in db.edges(ids[2:])] == [(ids[2], ids[3])]
        assert db.traverse(ids[3], depth=2, direction="in") == {ids[3]: 0, ids[2]: 1}
        if store.place != "compacted":  # the past stays until a full compaction
            assert [v.fields["text"] for v in db.history(ids[0])] == ["t0", "t0, revised"]
            assert db.get(ids[1], as_of=first) is not None
            assert {e.dst for e in db.edges(ids[0], known_at=with_edges)} == {ids[2]}
    # the two ids and ids[0]'s two edges: their past is in the files until the full compaction
    assert db.stats()["pending_erasures"] == (0 if store.place == "compacted" else 4)
    clock.advance()
    db.compact()
    assert db.stats()["pending_erasures"] == 0
    for id in ids[:2]:
        assert db.history(id) == [] and db.get(id, as_of=first) is None
    assert sorted(i.id for i in db.scan(known_at=first)) == sorted(ids[2:])
    assert all(h.id not in ids[:2] for h in db.search(vec(0), k=4, known_at=first, exact=True))
    named = [
        c for c in db.changes() if {getattr(c.record, a, None) for a in ("id", "src", "dst")} & set(ids[:2])
    ]
    assert named == []  # no row of the store names an erased id any more: items and edges
    assert db.edges(ids[0], known_at=with_edges) == [] and db.edges(ids[3], known_at=with_edges) == []
    assert db.folded_through is not None and db.folded_through >= erased_at
    assert [(e.src, e.dst) for e in db.edges(ids[2])] == [(ids[2], ids[3])]
    assert len(db) == 2


def test_erase_may_leave_the_edges(tmp_path, clock) -> None:
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        ids = db.insert([Item(vec(i)) for i in range(2)])
        db.add_edges(Edge(ids[0], ids[1]))
        clock.advance()
        db.erase(ids[0], edges=False)
        db.compact()
        assert db.history(ids[0]) == [] and [(e.src, e.dst) for e in db.edges(ids[0])] == [(ids[0], ids[1])]


def test_an_erase_and_its_edges_are_one_transaction(tmp_path, clock, monkeypatch) -> None:
    """The items' and the edges' erasing tombstones are one batch, one WAL record: a write that fails leaves
    all of it unwritten, and the change feed gives them at one transaction time."""
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        ids = db.insert([Item(vec(i)) for i in range(3)])
        db.add_edges([Edge(ids[0], ids[1]), Edge(ids[2], ids[0], "next")])
        synced = clock.advance()
        clock.advance()
        calls = []

        def fail(batch, *args, **kwargs):
            calls.append(batch.n)
            raise OSError("disk full")

        monkeypatch.setattr(db, "_commit", fail)
        with pytest.raises(OSError, match="disk full"):
            db.erase(ids[0])
        monkeypatch.undo()
        assert calls == [3]  # the two edges and the item, one batch
        assert db.get(ids[0]) is not None and len(db.edges(ids[0])) == 1 and len(db.edges(ids[2])) == 1
        db.erase(ids[0])
        changes = list(db.changes(since=synced))
        assert [(c.op, type(c.record).__name__) for c in changes] == [("erase", "Edge")] * 2 + [
            ("erase", "Item")
        ]
        assert len({c.recorded_at for c in changes}) == 1
        db.close()
        with T4DX.open(str(tmp_path / "s"), clock=clock) as again:  # the WAL record replays whole
            assert again.get(ids[0]) is None and again.edges(ids) == []
            assert [c.op for c in again.changes(since=synced)] == ["erase"] * 3


def test_a_version_written_after_an_erase_stays(tmp_path, clock) -> None:
    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock) as db:
        [id] = db.insert(Item(vec(1), fields={"text": "old"}))
        clock.advance()
        db.erase(id)
        clock.advance()
        db.insert(Item(vec(2), id=id, fields={"text": "new"}))
        again = clock.now
        db.compact()
        assert [v.fields["text"] for v in db.history(id)] == ["new"]
        assert db.get(id).recorded_at == again and db.get(id).superseded_at is None


def test_erase_is_a_change_a_follower_replays(tmp_path, clock) -> None:
    with (
        T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader,
        T4DX.open(str(tmp_path / "follower"), dim=DIM, clock=clock) as follower,
    ):
        ids = leader.insert([Item(vec(i)) for i in range(3)])
        clock.advance()
        leader.add_edges([Edge(ids[0], ids[1]), Edge(ids[1], ids[2])])
        clock.advance()
        follower.replay(leader.changes())
        synced = clock.now
        clock.advance()
        leader.erase(ids[0])
        unlinked, change = leader.changes(since=synced)
        assert unlinked.op == "erase" and (unlinked.record.src, unlinked.record.dst) == (ids[0], ids[1])
        assert change.op == "erase" and change.record.id == ids[0] and change.record.vector is None
        clock.advance()
        follower.replay([unlinked, change])
        assert follower.get(ids[0]) is None and len(follower.history(ids[0])) == 1
        assert follower.edges(ids[0]) == [] and len(follower.edges(ids[0], known_at=synced)) == 1
        follower.compact()
        leader.compact()
        for db in (leader, follower):
            assert db.history(ids[0]) == [] and len(db) == 2
            assert db.edges(ids[0], known_at=synced) == [] and len(db.edges(ids[1])) == 1
        # an id a replay never saw may be erased (a copy made after the leader erased it)
        clock.advance()
        follower.replay([type(change)(0, "erase", Item(None, "never-seen", recorded_at=clock.now))])
        assert follower.get("never-seen") is None


@pytest.mark.parametrize(
    ("ids", "error", "field"),
    [
        (["nobody"], UnknownId, "ids[0]"),
        (["a", "nobody"], UnknownId, "ids[1]"),
        (["a", 7], InvalidInput, "ids[1]"),
        (["a", "\x1eedge"], InvalidInput, "ids[1]"),
    ],
)
def test_a_bad_erase_names_the_id_and_writes_nothing(db, ids, error, field) -> None:
    db.insert(Item(vec(0), id="a"))
    before = list(db.changes())
    with pytest.raises(error) as info:
        db.erase(ids)
    assert info.value.field == field
    assert list(db.changes()) == before and db.get("a") is not None


def test_a_policy_that_drops_an_id_whole_erases_its_edges_too(tmp_path, clock) -> None:
    """PRUNE: a compaction policy that drops every row of an id erases it (an erasing tombstone in the feed),
    and its edges go the same way, live or removed; a follower keeps up through it."""
    with (
        T4DX.open(str(tmp_path / "leader"), dim=DIM, clock=clock) as leader,
        T4DX.open(str(tmp_path / "follower"), dim=DIM, clock=clock) as follower,
    ):
        ids = leader.insert([Item(vec(i)) for i in range(4)])
        leader.add_edges([Edge(ids[0], ids[1]), Edge(ids[2], ids[0], "next"), Edge(ids[2], ids[3])])
        clock.advance()
        leader.update_edge_weight(ids[0], ids[1], delta=1.0)
        leader.remove_edges(ids[2], ids[0], "next")
        clock.advance()
        follower.replay(leader.changes())
        synced = clock.now
        clock.advance()

        def prune(rows: MergedRows) -> None:
            rows.keep[np.asarray(rows.ids) == ids[0]] = False

        leader.compact(policy=prune)
        assert leader.get(ids[0]) is None and leader.history(ids[0]) == []
        assert leader.edges(ids[0], known_at=synced) == [] and leader.edges(ids[2], known_at=synced) != []
        assert [(e.src, e.dst) for e in leader.edges(ids)] == [(ids[2], ids[3])]
        changes = list(leader.changes(since=synced))  # not refused: nothing the feed cannot give was dropped
        assert [(c.op, type(c.record).__name__) for c in changes] == [("erase", "Edge")] * 2 + [
            ("erase", "Item")
        ]
        assert {(c.record.src, c.record.dst) for c in changes[:2]} == {(ids[0], ids[1]), (ids[2], ids[0])}
        clock.advance()
        follower.replay(changes)
        follower.compact()
        assert follower.history(ids[0]) == [] and follower.edges(ids[0], known_at=synced) == []
        assert [(e.src, e.dst, e.weight) for e in follower.edges(ids)] == [(ids[2], ids[3], 1.0)]


def test_batches_joined_into_one_keep_every_row_as_it_was(tmp_path) -> None:
    """``VersionBatch.concat`` (an erasure's items and edges as one transaction): each row keeps its kind,
    tags, id, fields and vector through the shared code tables and a WAL round trip; edge rows get zero
    vectors."""
    from t4dm.storage.query import unpack
    from t4dm.storage.rows import TAG_FIELDS, VersionBatch

    with T4DX.open(str(tmp_path / "s"), dim=DIM) as db:
        a = db._batch_from_items([Item(vec(0), id="a", kind="fact", fields={"user_id": "u", "run_id": "r1"}),
                                  Item(vec(1), id="b", fields={"user_id": "v", "x": 1})])  # fmt: skip
        b = db._batch_from_items(
            [Item(vec(2), id="c", kind="episode", fields={"user_id": "v", "agent_id": 7})]
        )
        e = db._edge_batch(["a"], ["c"], ["next"], np.array([2.0]), np.array([0]), np.array([2**62]))
        batches = [e, a, b]
        joined = VersionBatch.concat(batches, DIM)
        joined.seq_start, joined.recorded_at = 1, 5
        again = VersionBatch.decode(b"".join(bytes(p) for p in joined.encode()), "wal", 0)
        rows = [(batch, i) for batch in batches for i in range(batch.n)]
        assert again.n == len(rows) == 4 and again.ids == ["\x1ea\x1fnext\x1fc", "a", "b", "c"]
        for j, (batch, i) in enumerate(rows):
            assert again.kinds[again.kind[j]] == batch.kinds[batch.kind[i]]
            for slot in range(len(TAG_FIELDS)):
                code, was = int(again.tags[j, slot]), int(batch.tags[i, slot])
                assert code == was if was < 0 else again.tag_values[slot][code] == batch.tag_values[slot][was]
            assert unpack(again.fields_bytes(j)) == unpack(batch.fields_bytes(i))
            vector = batch.vectors[i] if batch.vectors.shape[1] else np.zeros(DIM, np.float32)
            np.testing.assert_array_equal(again.vectors[j], vector)
            for name in ("key_hi", "key_lo", "flags", "src_hi", "dst_lo", "weight", "valid_to"):
                assert getattr(again, name)[j] == getattr(batch, name)[i]
