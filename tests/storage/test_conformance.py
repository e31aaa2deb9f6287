"""Every primitive, with the data in each place it can live: memtable, segment, compacted, reopened."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

import numpy as np
import pytest

from t4dm.errors import InvalidInput, UnknownId
from t4dm.storage import UTC, Item

from .conftest import DIM, vec

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def test_insert_assigns_uuid_and_get_round_trips(store):
    db = store.db
    item = Item(
        vector=vec(1),
        kappa=0.3,
        kind="entity",
        fields={"text": "Alice", "user_id": "u1", "n": [1, 2.5, None, True]},
    )
    [id] = db.insert(item)
    assert UUID.fullmatch(id)
    db = store.settle()
    got = db.get(id)
    assert got.id == id
    np.testing.assert_array_equal(got.vector, vec(1))
    assert got.vector.dtype == np.float32 and got.vector.shape == (DIM,)
    assert got.kappa == 0.3
    assert got.kind == "entity"
    assert got.fields == {"text": "Alice", "user_id": "u1", "n": [1, 2.5, None, True]}
    assert got.valid_from == got.recorded_at == T0  # valid from "now" by default
    assert got.valid_to is None and got.superseded_at is None


def test_user_ids_any_string(store):
    ids = [
        "plain",
        "ünïcödé/🙂",
        "550e8400-e29b-41d4-a716-446655440000",
        "550E8400-E29B-41D4-A716-446655440000",
    ]
    assert store.db.insert([Item(vector=vec(i), id=id) for i, id in enumerate(ids)]) == ids
    db = store.settle()
    for i, id in enumerate(ids):
        np.testing.assert_array_equal(db.get(id).vector, vec(i))
    assert db.get("missing") is None
    assert len(db) == 4


def test_insert_batch_columns(store):
    vectors = np.stack([vec(i) for i in range(50)])
    fields = [{"i": i, "user_id": f"u{i % 3}"} for i in range(50)]
    ids = store.db.insert_batch(vectors, fields, kappa=np.linspace(0, 1, 50), kind=["episode", "entity"] * 25)
    db = store.settle()
    assert len(ids) == len(set(ids)) == 50
    for i in (0, 17, 49):
        got = db.get(ids[i])
        np.testing.assert_array_equal(got.vector, vectors[i])
        assert got.fields == fields[i]
        assert got.kappa == pytest.approx(np.linspace(0, 1, 50)[i])
        assert got.kind == ("episode", "entity")[i % 2]


def test_update_writes_new_version(store, clock):
    db = store.db
    [id] = db.insert(Item(vector=vec(1), fields={"text": "Lyon", "user_id": "u1"}))
    t_insert = clock.now
    clock.advance(10)
    new = db.update_fields(id, {"text": "Paris"}, kappa=0.5)
    assert new.fields == {"text": "Paris", "user_id": "u1"} and new.kappa == 0.5
    db = store.settle()
    assert db.get(id).fields["text"] == "Paris"
    old, current = db.history(id)
    assert old.fields["text"] == "Lyon" and old.recorded_at == t_insert and old.superseded_at == clock.now
    assert current.recorded_at == clock.now and current.superseded_at is None
    np.testing.assert_array_equal(current.vector, vec(1))
    assert db.get(id, as_of=t_insert).fields["text"] == "Lyon"
    assert db.get(id, as_of=t_insert - timedelta(seconds=1)) is None
    assert db.get(id, as_of=clock.now).fields["text"] == "Paris"


def test_update_attributes(store):
    db = store.db
    [id] = db.insert(Item(vector=vec(1)))
    db.update_fields(
        id,
        vector=vec(2),
        kind="prototype",
        valid_from=T0 - timedelta(days=3),
        valid_to=T0 + timedelta(days=3),
    )
    db = store.settle()
    got = db.get(id)
    np.testing.assert_array_equal(got.vector, vec(2))
    assert (got.kind, got.valid_from, got.valid_to) == (
        "prototype",
        T0 - timedelta(days=3),
        T0 + timedelta(days=3),
    )


def test_insert_existing_id_is_new_version(store, clock):
    db = store.db
    db.insert(Item(vector=vec(1), id="x", fields={"v": 1}))
    db = store.settle()
    clock.advance()
    db.insert(Item(vector=vec(2), id="x", fields={"v": 2}))
    db = store.settle()
    assert db.get("x").fields == {"v": 2}
    assert [v.fields["v"] for v in db.history("x")] == [1, 2]
    assert len(db) == 1


def test_delete_is_a_tombstone(store, clock):
    db = store.db
    ids = db.insert([Item(vector=vec(i), fields={"i": i}) for i in range(3)])
    db = store.settle()
    before = clock.now
    clock.advance()
    db.delete(ids[0])
    db = store.settle()
    assert db.get(ids[0]) is None
    assert db.get(ids[0], as_of=before).fields == {"i": 0}
    [version] = db.history(ids[0])
    assert version.superseded_at == clock.now
    assert len(db) == 2 and {i.id for i in db.scan()} == set(ids[1:])
    with pytest.raises(UnknownId):
        db.delete(ids[0])
    with pytest.raises(UnknownId):
        db.update_fields(ids[0], {"i": 9})
    # re-inserting a deleted id starts a new live version
    db.insert(Item(vector=vec(0), id=ids[0], fields={"i": 10}))
    assert store.settle().get(ids[0]).fields == {"i": 10}


def test_delete_many_is_all_or_nothing(store):
    db = store.db
    ids = db.insert([Item(vector=vec(i)) for i in range(3)])
    db = store.settle()
    with pytest.raises(UnknownId) as err:
        db.delete([ids[0], "nope", ids[1]])
    assert err.value.value == "nope"
    assert len(db) == 3
    db.delete([ids[0], ids[1], ids[0]])
    assert len(store.settle()) == 1


def _fill(db, clock):
    """Twelve items over two users, three kinds, κ spread, and valid times a day apart."""
    items = []
    for i in range(12):
        items.append(
            Item(
                vector=vec(i),
                id=f"item-{i}",
                kappa=i / 11,
                kind=("episode", "entity", "procedure")[i % 3],
                fields={"user_id": ("alice", "bob")[i % 2], "topic": ("work", "home")[i // 6], "i": i},
                valid_from=T0 + timedelta(days=i),
                valid_to=T0 + timedelta(days=i + 2),
            )
        )
    db.insert(items)
    return items


def _ids(items):
    return sorted(i.id for i in items)


def test_scan_filters(store, clock):
    items = _fill(store.db, clock)
    db = store.settle()

    def expect(pred):
        return _ids(i for i in items if pred(i))

    assert _ids(db.scan()) == expect(lambda i: True)
    assert _ids(db.scan(kappa=(0.0, 0.4))) == expect(lambda i: i.kappa <= 0.4)
    assert _ids(db.scan(kappa=(3 / 11, 3 / 11))) == ["item-3"]  # inclusive bounds
    assert _ids(db.scan(kind="entity")) == expect(lambda i: i.kind == "entity")
    assert _ids(db.scan(kind=["entity", "procedure"])) == expect(lambda i: i.kind != "episode")
    assert _ids(db.scan(kind="nothing")) == []
    assert _ids(db.scan(where={"user_id": "alice"})) == expect(lambda i: i.fields["user_id"] == "alice")
    assert _ids(db.scan(where={"user_id": "carol"})) == []
    assert _ids(db.scan(where={"topic": "home"})) == expect(lambda i: i.fields["topic"] == "home")
    assert _ids(db.scan(where={"i": 4.0})) == ["item-4"]  # JSON equality: 4 == 4.0
    assert _ids(db.scan(where={"user_id": "bob", "topic": "work"})) == ["item-1", "item-3", "item-5"]
    day3 = T0 + timedelta(days=3, hours=1)
    assert _ids(db.scan(valid_at=day3)) == ["item-2", "item-3"]
    assert _ids(db.scan(valid_at=T0 + timedelta(days=3))) == ["item-2", "item-3"]  # [from, to)
    combined = db.scan(kappa=(0.0, 0.5), kind="episode", where={"user_id": "alice"}, valid_at=T0)
    assert _ids(combined) == ["item-0"]
    assert len(list(db.scan(limit=5))) == 5
    assert db.count(where={"user_id": "alice"}) == 6


def test_scan_of_every_version(store, clock):
    """``history=True``: every version the store holds that matches, superseded ones and those of deleted
    ids, with their transaction times; filters apply to each version as it was."""
    db = store.db
    db.insert([Item(vec(i), id=id, kappa=0.1, fields={"user_id": "u"}) for i, id in enumerate("abc")])
    first = clock.now
    clock.advance()
    db.insert(Item(vec(9), id="z", fields={"user_id": "v"}))
    z_at = clock.now
    clock.advance()
    db.update_fields("a", {"user_id": "v"})  # a's second version is v's
    a_at = clock.now
    clock.advance()
    db.update_fields("b", {"note": 1}, kappa=0.9)
    b_at = clock.now
    clock.advance()
    db.delete("c")
    c_at = clock.now
    db = store.settle()
    every = sorted(
        (i.id, i.fields["user_id"], i.kappa, i.recorded_at, i.superseded_at) for i in db.scan(history=True)
    )
    assert every == [
        ("a", "u", 0.1, first, a_at), ("a", "v", 0.1, a_at, None),
        ("b", "u", 0.1, first, b_at), ("b", "u", 0.9, b_at, None),
        ("c", "u", 0.1, first, c_at), ("z", "v", 0.0, z_at, None),
    ]  # fmt: skip
    assert sorted(i.id for i in db.scan(where={"user_id": "u"}, history=True)) == ["a", "b", "b", "c"]
    assert db.count(where={"user_id": "u"}, history=True) == 4 and db.count(history=True) == 6
    assert sorted(i.id for i in db.scan(where={"user_id": "u"})) == ["b"]
    assert sorted(i.id for i in db.scan(kappa=(0.5, 1.0), history=True)) == ["b"]
    # the κ index answers for superseded versions and deleted ids too
    assert sorted(i.id for i in db.scan(kappa=(0.05, 0.2), history=True)) == ["a", "a", "b", "c"]
    assert sorted(i.id for i in db.scan(kappa=(0.05, 0.2), where={"user_id": "u"}, history=True)) == [
        "a",
        "b",
        "c",
    ]
    assert [i.id for i in db.scan(history=True, limit=2)] and len(list(db.scan(history=True, limit=2))) == 2


def test_get_many_is_get_for_each_id(store, clock):
    """GET of many ids at once, wherever their versions live: in order, None for missing and deleted ids,
    the version known ``as_of`` a time; a bad id is refused by its position."""
    db = store.db
    db.insert([Item(vec(i), id=f"g{i}", fields={"v": i}) for i in range(6)])
    first = clock.now
    clock.advance()
    db.update_fields("g1", {"v": 10})
    db.delete("g2")
    db = store.settle()
    db.insert(Item(vec(9), id="g3", fields={"v": 30}))  # a newer version in the memtable
    ids = ["g3", "nope", "g1", "g2", "g0", "g1"]
    got = db.get_many(ids)
    assert [None if i is None else i.fields["v"] for i in got] == [30, None, 10, None, 0, 10]
    for id, item in zip(ids, got, strict=True):
        want = db.get(id)
        assert (item is None) == (want is None)
        if item is not None:
            assert (item.id, item.fields, item.recorded_at, item.superseded_at) == (
                want.id, want.fields, want.recorded_at, want.superseded_at,
            )  # fmt: skip
            np.testing.assert_array_equal(item.vector, want.vector)
    past = db.get_many(["g1", "g2", "g3"], as_of=first)
    assert [i.fields["v"] for i in past] == [1, 2, 3]
    assert db.get_many([]) == []
    with pytest.raises(InvalidInput) as info:
        db.get_many(["g0", 7])
    assert info.value.field == "ids[1]"


def test_where_on_non_string_tag_and_missing_field(store):
    db = store.db
    db.insert(
        [
            Item(vector=vec(0), id="a", fields={"user_id": 7}),
            Item(vector=vec(1), id="b", fields={"user_id": True}),
            Item(vector=vec(2), id="c", fields={}),
            Item(vector=vec(3), id="d", fields={"user_id": None, "tags": ["x", "y"]}),
        ]
    )
    db = store.settle()
    assert _ids(db.scan(where={"user_id": 7})) == ["a"]
    assert _ids(db.scan(where={"user_id": True})) == ["b"]  # a boolean is not the number 1
    assert _ids(db.scan(where={"user_id": 1})) == []
    assert _ids(db.scan(where={"user_id": None})) == ["d"]
    assert _ids(db.scan(where={"tags": ("x", "y")})) == ["d"]  # tuples are stored as lists


def test_bitemporal_what_did_we_know_when(store, clock):
    """Alice moved from Lyon to Paris on 2023-05-08; the store learnt it late, on 2025-01-01 + 1 day."""
    db = store.db
    moved = datetime(2023, 5, 8, tzinfo=UTC)
    db.insert(
        Item(
            vector=vec(0),
            id="lyon",
            fields={"text": "Alice lives in Lyon"},
            valid_from=datetime(2020, 1, 1, tzinfo=UTC),
        )
    )
    t_first = clock.now
    clock.advance(86400)
    # the correction: Lyon stopped being true in May 2023, Paris started
    db.update_fields("lyon", valid_to=moved)
    t_update = clock.now
    db.insert(Item(vector=vec(1), id="paris", fields={"text": "Alice lives in Paris"}, valid_from=moved))
    db = store.settle()
    # transaction times are strictly increasing: the second commit at the same clock reading gets +1 µs
    t_learnt = db.get("paris").recorded_at
    assert t_learnt == t_update + timedelta(microseconds=1)
    june_2023 = datetime(2023, 6, 1, tzinfo=UTC)
    # what we know now about June 2023
    assert _ids(db.scan(valid_at=june_2023)) == ["paris"]
    # what we knew on day one about June 2023: Lyon (then open-ended)
    assert _ids(db.scan(valid_at=june_2023, known_at=t_first)) == ["lyon"]
    # what we knew on day one about 2021: Lyon; and now about 2021: still Lyon (the closed version)
    y2021 = datetime(2021, 1, 1, tzinfo=UTC)
    assert _ids(db.scan(valid_at=y2021, known_at=t_first)) == ["lyon"]
    assert _ids(db.scan(valid_at=y2021)) == ["lyon"]
    assert _ids(db.scan(known_at=t_learnt)) == ["lyon", "paris"]
    assert _ids(db.scan(known_at=t_first - timedelta(seconds=1))) == []
    [v] = db.scan(valid_at=y2021, known_at=t_first)
    assert v.valid_to is None and v.superseded_at == t_update


def test_len_count_and_stats(store):
    db = store.db
    ids = db.insert([Item(vector=vec(i)) for i in range(5)])
    db.delete(ids[0])
    db.update_fields(ids[1], {"x": 1})
    db = store.settle()
    assert len(db) == 4 == db.count() == db.stats()["live_items"]


def test_reopen_replays_unflushed_writes(tmp_path, clock):
    from t4dm.storage import T4DX

    path = str(tmp_path / "s")
    with T4DX.open(path, dim=DIM, clock=clock) as db:
        ids = db.insert([Item(vector=vec(i), fields={"i": i}) for i in range(3)])
        db.flush()
        db.update_fields(ids[0], {"i": 100})
        db.delete(ids[1])
        db.insert(Item(vector=vec(9), id="late"))
    with T4DX.open(path) as db:
        assert db.dim == DIM
        assert db.get(ids[0]).fields == {"i": 100}
        assert db.get(ids[1]) is None
        assert db.get("late") is not None
        assert len(db.history(ids[0])) == 2
        assert len(db) == 3


def test_many_segments_and_auto_compaction(tmp_path, clock):
    from t4dm.storage import T4DX

    with T4DX.open(str(tmp_path / "s"), dim=DIM, clock=clock, max_segments=3) as db:
        for round_ in range(7):
            db.insert(
                [Item(vector=vec(round_ * 10 + i), id=f"k{i}", fields={"round": round_}) for i in range(4)]
            )
            db.insert(Item(vector=vec(round_), id=f"only{round_}"))
            db.flush()
            clock.advance()
            assert db.stats()["segments"] <= 3
        assert len(db) == 4 + 7
        assert all(db.get(f"k{i}").fields == {"round": 6} for i in range(4))
        assert [v.fields["round"] for v in db.history("k2")] == list(range(7))
        # at T0 + 3 s: k0..k3 (round 3, written at exactly T0 + 3 s) and only0..only2 (only3 came 1 µs later)
        assert db.count(known_at=T0 + timedelta(seconds=3)) == 4 + 3
        assert {
            i.fields.get("round") for i in db.scan(known_at=T0 + timedelta(seconds=3), where={"round": 3})
        } == {3}


def test_context_manager_and_closed_store(tmp_path):
    from t4dm.errors import StoreClosed
    from t4dm.storage import T4DX

    with T4DX.open(str(tmp_path / "s"), dim=DIM) as db:
        db.insert(Item(vector=vec(0)))
    for call in (
        lambda: db.insert(Item(vector=vec(0))),
        lambda: db.get("x"),
        lambda: list(db.scan()),
        db.flush,
    ):
        with pytest.raises(StoreClosed):
            call()
    db.close()  # idempotent
