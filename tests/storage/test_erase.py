"""ERASE: an erasing tombstone hides an id at once, and the next full compaction drops every row of it, so no
read of any past time finds it; the change feed gives it, a follower replays it, and a version written after
it stays."""

from __future__ import annotations

import pytest

from t4dm.errors import InvalidInput, UnknownId
from t4dm.storage import T4DX, Edge, Item

from .conftest import DIM, vec


def test_erase_hides_at_once_and_erases_at_the_next_full_compaction(store) -> None:
    db, clock = store.db, store.clock
    ids = db.insert([Item(vec(i), fields={"text": f"t{i}", "user_id": "u"}) for i in range(4)])
    first = clock.now
    clock.advance()
    db.update_fields(ids[0], {"text": "t0, revised"})
    db.add_edges(Edge(ids[0], ids[2]))
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
        if store.place != "compacted":  # the past stays until a full compaction
            assert [v.fields["text"] for v in db.history(ids[0])] == ["t0", "t0, revised"]
            assert db.get(ids[1], as_of=first) is not None
    clock.advance()
    db.compact()
    for id in ids[:2]:
        assert db.history(id) == [] and db.get(id, as_of=first) is None
    assert sorted(i.id for i in db.scan(known_at=first)) == sorted(ids[2:])
    assert all(h.id not in ids[:2] for h in db.search(vec(0), k=4, known_at=first, exact=True))
    assert not [c for c in db.changes() if getattr(c.record, "id", None) in ids[:2]]
    assert db.folded_through is not None and db.folded_through >= erased_at
    assert [(e.src, e.dst) for e in db.edges(ids[0])] == [(ids[0], ids[2])]  # its edges stay
    assert len(db) == 2


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
        follower.replay(leader.changes())
        synced = clock.now
        clock.advance()
        leader.erase(ids[0])
        [change] = leader.changes(since=synced)
        assert change.op == "erase" and change.record.id == ids[0] and change.record.vector is None
        clock.advance()
        follower.replay([change])
        assert follower.get(ids[0]) is None and len(follower.history(ids[0])) == 1
        follower.compact()
        leader.compact()
        for db in (leader, follower):
            assert db.history(ids[0]) == [] and len(db) == 2
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
