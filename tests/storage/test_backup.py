"""BACKUP: a copy of the store that opens on its own and answers as the store did when it was taken."""

from __future__ import annotations

import os
from datetime import datetime

import pytest

from t4dm import errors
from t4dm.storage import T4DX, UTC, Edge, Item

from .conftest import DIM, vec


def _answers(db: T4DX, a: str, b: str, c: str, before: datetime) -> dict:
    """What the tests compare between a store and its backup."""
    return {
        "get": db.get(a).fields, "as_of": db.get(a, as_of=before).fields, "c": db.get(c),
        "search": [h.id for h in db.search(vec(1), k=3)],
        "edges": {(e.src, e.dst, e.rel): e.weight for e in db.edges([a, b])},
        "traverse": dict(db.traverse(a, 2, with_weights=True).to_dict()), "count": db.count(),
    }  # fmt: skip


def test_a_backup_answers_as_the_store_did(tmp_path):
    with T4DX.open(tmp_path / "db", dim=DIM, durability="none") as db:
        a, b, c = db.insert([Item(vector=vec(i), fields={"text": f"t{i}", "user_id": "u"}) for i in range(3)])
        db.flush()
        db.compact()
        before = datetime.now(UTC)
        db.update_fields(a, {"text": "changed"})
        db.add_edges([Edge(a, b, rel="related", weight=0.5), Edge(b, c)])
        db.update_edge_weight(a, b, rel="related", delta=0.25)  # an overlay, still in the memtable
        db.batch_scale_weights(0.5)
        db.delete(c)
        copy = db.backup(tmp_path / "copy")
        expected = _answers(db, a, b, c, before)
        # the store goes on; the copy does not follow it
        [d] = db.insert(Item(vector=vec(7)))
        db.update_fields(a, {"text": "later"})
        db.compact()
    assert copy == os.path.abspath(tmp_path / "copy") and not os.path.exists(copy + ".backup-tmp")
    with T4DX.open(copy) as again:
        got = _answers(again, a, b, c, before)
        assert got == expected and again.get(d) is None
        assert got["get"]["text"] == "changed" and got["as_of"]["text"] == "t0" and got["c"] is None
        assert got["edges"][(a, b, "related")] == pytest.approx(0.375)


def test_backup_refuses_an_existing_path_and_a_closed_store(tmp_path):
    (tmp_path / "taken").mkdir()
    db = T4DX.open(tmp_path / "db", dim=DIM, durability="none")
    db.insert(Item(vector=vec(0)))
    with pytest.raises(errors.InvalidInput) as info:
        db.backup(tmp_path / "taken")
    assert info.value.field == "path" and os.listdir(tmp_path / "taken") == []
    db.close()
    with pytest.raises(errors.StoreClosed):
        db.backup(tmp_path / "later")
    assert not os.path.exists(tmp_path / "later")
