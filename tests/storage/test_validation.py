"""Bad input raises a typed error naming the field and the value, and writes nothing."""

from __future__ import annotations

import os
from datetime import datetime, timedelta

import numpy as np
import pytest

from t4dm import errors
from t4dm.storage import T4DX, UTC, Item

from .conftest import DIM, vec

NAIVE = datetime(2025, 1, 1)
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def _state(db: T4DX):
    return (len(db), db.stats()["last_seq"], sorted((i.id, repr(i.fields)) for i in db.scan()))


BAD_ITEMS = [
    pytest.param(Item(vector=np.zeros(DIM + 1)), errors.DimensionMismatch, "items[1].vector", id="wrong-dim"),
    pytest.param(Item(vector=np.zeros((2, DIM))), errors.DimensionMismatch, "items[1].vector", id="matrix"),
    pytest.param(Item(vector=np.full(DIM, np.nan)), errors.InvalidVector, "items[1].vector", id="nan"),
    pytest.param(Item(vector=np.full(DIM, np.inf)), errors.InvalidVector, "items[1].vector", id="inf"),
    pytest.param(
        Item(vector=np.full(DIM, 1e39)), errors.InvalidVector, "items[1].vector", id="float32-overflow"
    ),
    pytest.param(Item(vector=["a"] * DIM), errors.InvalidVector, "items[1].vector", id="strings"),
    pytest.param(Item(vector=np.zeros(DIM, complex)), errors.InvalidVector, "items[1].vector", id="complex"),
    pytest.param(Item(vector=vec(0), kappa=1.5), errors.InvalidInput, "items[1].kappa", id="kappa-high"),
    pytest.param(Item(vector=vec(0), kappa=-0.1), errors.InvalidInput, "items[1].kappa", id="kappa-low"),
    pytest.param(
        Item(vector=vec(0), kappa=float("nan")), errors.InvalidInput, "items[1].kappa", id="kappa-nan"
    ),
    pytest.param(Item(vector=vec(0), kappa="0.5"), errors.InvalidInput, "items[1].kappa", id="kappa-str"),
    pytest.param(Item(vector=vec(0), kind=""), errors.InvalidInput, "items[1].kind", id="kind-empty"),
    pytest.param(Item(vector=vec(0), kind=3), errors.InvalidInput, "items[1].kind", id="kind-int"),
    pytest.param(Item(vector=vec(0), id=""), errors.InvalidInput, "items[1].id", id="id-empty"),
    pytest.param(Item(vector=vec(0), id=42), errors.InvalidInput, "items[1].id", id="id-int"),
    pytest.param(
        Item(vector=vec(0), fields={"t": {1, 2}}), errors.PayloadNotSerializable, "items[1].fields", id="set"
    ),
    pytest.param(
        Item(vector=vec(0), fields={"t": T0}), errors.PayloadNotSerializable, "items[1].fields", id="datetime"
    ),
    pytest.param(
        Item(vector=vec(0), fields={"t": 2**70}),
        errors.PayloadNotSerializable,
        "items[1].fields",
        id="bigint",
    ),
    pytest.param(
        Item(vector=vec(0), fields={1: "x"}), errors.PayloadNotSerializable, "items[1].fields", id="int-key"
    ),
    pytest.param(
        Item(vector=vec(0), fields=["x"]), errors.PayloadNotSerializable, "items[1].fields", id="list"
    ),
    pytest.param(
        Item(vector=vec(0), valid_from=NAIVE), errors.InvalidTime, "items[1].valid_from", id="naive-from"
    ),
    pytest.param(Item(vector=vec(0), valid_to=NAIVE), errors.InvalidTime, "items[1].valid_to", id="naive-to"),
    pytest.param(
        Item(vector=vec(0), valid_from=T0, valid_to=T0),
        errors.InvalidTime,
        "items[1].valid_to",
        id="empty-valid",
    ),
    pytest.param(
        Item(vector=vec(0), valid_from="2025"), errors.InvalidTime, "items[1].valid_from", id="from-str"
    ),
    pytest.param(
        Item(vector=vec(0), recorded_at=T0), errors.InvalidTime, "items[1].recorded_at", id="recorded-at"
    ),
]


@pytest.mark.parametrize(("bad", "error", "field"), BAD_ITEMS)
def test_bad_item_in_batch_writes_nothing(db, bad, error, field):
    db.insert(Item(vector=vec(9), id="existing"))
    before = _state(db)
    with pytest.raises(error) as info:
        db.insert([Item(vector=vec(1), id="good"), bad])
    assert info.value.field == field
    assert field in str(info.value)
    assert _state(db) == before
    assert db.get("good") is None


def test_not_an_item(db):
    with pytest.raises(errors.InvalidInput, match=r"items\[0\]"):
        db.insert([{"vector": vec(0)}])


def test_valid_to_before_default_valid_from(db, clock):
    with pytest.raises(errors.InvalidTime, match="valid_to"):
        db.insert(Item(vector=vec(0), valid_to=clock.now - timedelta(days=1)))
    assert len(db) == 0


@pytest.mark.parametrize(
    ("kwargs", "error", "field"),
    [
        ({"vectors": np.zeros((3, DIM + 1))}, errors.DimensionMismatch, "vectors"),
        ({"vectors": np.zeros(DIM)}, errors.InvalidVector, "vectors"),
        ({"vectors": np.array([[np.nan] * DIM, [0] * DIM])}, errors.InvalidVector, "vectors[0]"),
        ({"vectors": np.zeros((2, DIM)), "fields": [{}]}, errors.InvalidInput, "fields"),
        (
            {"vectors": np.zeros((2, DIM)), "fields": [{}, {"x": object()}]},
            errors.PayloadNotSerializable,
            "fields",
        ),
        ({"vectors": np.zeros((2, DIM)), "kappa": [0.1, 2.0]}, errors.InvalidInput, "kappa[1]"),
        ({"vectors": np.zeros((2, DIM)), "kappa": [0.1]}, errors.InvalidInput, "kappa"),
        ({"vectors": np.zeros((2, DIM)), "ids": ["a", ""]}, errors.InvalidInput, "ids[1]"),
        ({"vectors": np.zeros((2, DIM)), "kind": ["a"]}, errors.InvalidInput, "kind"),
        ({"vectors": np.zeros((2, DIM)), "valid_from": NAIVE}, errors.InvalidTime, "valid_from"),
        ({"vectors": np.zeros((2, DIM)), "valid_to": [T0, NAIVE]}, errors.InvalidTime, "valid_to[1]"),
    ],
    ids=[
        "dim",
        "rank",
        "nan",
        "fields-count",
        "fields-type",
        "kappa",
        "kappa-shape",
        "ids",
        "kinds",
        "naive",
        "naive-row",
    ],
)
def test_bad_insert_batch_writes_nothing(db, kwargs, error, field):
    with pytest.raises(error) as info:
        db.insert_batch(**kwargs)
    assert info.value.field.startswith(field)
    assert len(db) == 0 and db.stats()["last_seq"] == 0


def test_update_and_delete_errors(db):
    [id] = db.insert(Item(vector=vec(0), fields={"a": 1}))
    before = _state(db)
    with pytest.raises(errors.UnknownId) as info:
        db.update_fields("missing", {"a": 2})
    assert info.value.value == "missing" and isinstance(info.value, KeyError)
    with pytest.raises(errors.InvalidInput, match="changes"):
        db.update_fields(id, ["a"])
    with pytest.raises(errors.PayloadNotSerializable):
        db.update_fields(id, {"a": object()})
    with pytest.raises(errors.InvalidInput, match="kappa"):
        db.update_fields(id, kappa=3)
    with pytest.raises(errors.DimensionMismatch):
        db.update_fields(id, vector=np.zeros(3))
    with pytest.raises(errors.InvalidTime):
        db.update_fields(id, valid_to=NAIVE)
    with pytest.raises(errors.UnknownId):
        db.delete("missing")
    with pytest.raises(errors.InvalidInput):
        db.delete([id, 5])
    assert _state(db) == before


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kappa": (0.5, 0.1)}, "kappa"),
        ({"kappa": (0, 2)}, "kappa"),
        ({"kappa": 0.3}, "kappa"),
        ({"kind": 3}, "kind"),
        ({"where": ["user_id"]}, "where"),
        ({"where": {"x": object()}}, "where['x']"),
        ({"valid_at": NAIVE}, "valid_at"),
        ({"known_at": "yesterday"}, "known_at"),
        ({"limit": -1}, "limit"),
        ({"history": "yes"}, "history"),
        ({"history": True, "known_at": datetime(2025, 1, 1, tzinfo=UTC)}, "history"),
    ],
)
def test_bad_scan_arguments(db, kwargs, field):
    with pytest.raises(errors.InvalidInput) as info:
        db.scan(**kwargs)
    assert info.value.field == field


def test_get_bad_arguments(db):
    with pytest.raises(errors.InvalidInput):
        db.get(None)
    with pytest.raises(errors.InvalidTime):
        db.get("x", as_of=NAIVE)


def test_open_errors(tmp_path):
    file_path = tmp_path / "file"
    file_path.write_text("not a store")
    with pytest.raises(errors.NotAStore) as info:
        T4DX.open(str(file_path), dim=DIM)
    assert str(file_path) in str(info.value)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(errors.NotAStore):
        T4DX.open(str(foreign), dim=DIM)
    assert os.listdir(foreign) == ["notes.txt"]  # nothing written into a folder that is not ours
    with pytest.raises(errors.InvalidInput, match="dim"):
        T4DX.open(str(tmp_path / "new"))
    for bad in (
        {"dim": 0},
        {"dim": 2.5},
        {"dim": DIM, "durability": "fast"},
        {"dim": DIM, "memtable_bytes": 0},
    ):
        with pytest.raises(errors.InvalidInput):
            T4DX.open(str(tmp_path / "new"), **bad)
    T4DX.open(str(tmp_path / "s"), dim=DIM).close()
    with pytest.raises(errors.DimensionMismatch) as info:
        T4DX.open(str(tmp_path / "s"), dim=DIM + 1)
    assert info.value.expected == DIM
    T4DX.open(str(tmp_path / "s")).close()  # the lock was released by the failed open


def test_second_writer_is_refused(tmp_path):
    path = str(tmp_path / "s")
    with T4DX.open(path, dim=DIM) as db:
        with pytest.raises(errors.StoreLocked) as info:
            T4DX.open(path, dim=DIM)
        assert path in str(info.value)
        db.insert(Item(vector=vec(0)))  # the first handle still works
    T4DX.open(path).close()


def test_error_hierarchy():
    assert issubclass(errors.DimensionMismatch, errors.T4DXError)
    assert issubclass(errors.DimensionMismatch, ValueError)
    assert issubclass(errors.CorruptSegment, errors.Corruption)
    assert issubclass(errors.UnknownId, KeyError)
    assert issubclass(errors.StorageIOError, OSError)
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.T4DMError)


def test_failed_bulk_ingest_changes_nothing(tmp_path, monkeypatch):
    """A disk error while a bulk batch is written leaves the store as it was, and usable."""
    from t4dm.storage import segment

    with T4DX.open(str(tmp_path / "s"), dim=DIM, memtable_bytes=64) as db:  # every write is a bulk ingest
        db.insert(Item(vector=vec(0), id="a", fields={"v": 1}))
        real_finish = segment.SegmentWriter.finish

        def failing_finish(self, **kwargs):
            raise errors.StorageIOError(self.tmp_path, OSError(28, "No space left on device"))

        monkeypatch.setattr(segment.SegmentWriter, "finish", failing_finish)
        with pytest.raises(errors.StorageIOError, match="No space left"):
            db.insert([Item(vector=vec(2), id="b"), Item(vector=vec(1), id="a", fields={"v": 2})])
        monkeypatch.setattr(segment.SegmentWriter, "finish", real_finish)
        assert db.get("a").fields == {"v": 1} and db.get("b") is None and len(db) == 1
        assert not [n for n in os.listdir(tmp_path / "s" / "segments") if n.endswith(".tmp")]
        db.insert(Item(vector=vec(3), id="c"))  # these reuse the sequence numbers the failed write had
        db.insert(Item(vector=vec(4), id="d"))
        assert sorted(i.id for i in db.scan()) == ["a", "c", "d"]
        db.insert(Item(vector=vec(5), id="a", fields={"v": 3}))
        assert db.get("a").fields == {"v": 3} and [v.fields["v"] for v in db.history("a")] == [1, 3]
    with T4DX.open(str(tmp_path / "s")) as db:
        assert db.get("a").fields == {"v": 3} and len(db) == 3
