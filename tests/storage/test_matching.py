"""``T4DX.matching``: the filters of SCAN applied to named ids, on the columns, equal to filtering the items
one by one, wherever the data live (memtable, segment, compacted, reopened, bulk-ingested)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from t4dm import errors
from t4dm.storage import Item

from .conftest import vec


def _by_hand(db, ids, kappa=None, kind=None, where=None, valid_at=None, known_at=None):
    """The reference: each id's item (as GET returns it), checked in Python."""
    out = []
    for id in ids:
        item = db.get(id, as_of=known_at) if known_at is not None else db.get(id)
        if item is None:
            continue
        if kappa is not None and not kappa[0] <= item.kappa <= kappa[1]:
            continue
        if kind is not None and item.kind not in ({kind} if isinstance(kind, str) else set(kind)):
            continue
        if where is not None and any(item.fields.get(k) != v for k, v in where.items()):
            continue
        if valid_at is not None and not (
            item.valid_from <= valid_at and (item.valid_to is None or valid_at < item.valid_to)
        ):
            continue
        out.append(id)
    return out


def test_matching_equals_filtering_each_item(store, clock):
    db = store.db
    t0 = clock.now
    db.insert(
        [
            Item(vector=vec(i), id=f"m{i}", kappa=i / 10, kind="episode" if i % 2 else "fact",
                 fields={"user_id": "a" if i < 5 else "b", "topic": "x" if i % 3 else "y"},
                 valid_from=t0 + timedelta(days=i), valid_to=t0 + timedelta(days=i + 3) if i % 4 == 0 else None)
            for i in range(10)
        ]
    )  # fmt: skip
    clock.advance(10)
    before_changes = clock.now
    clock.advance(10)
    db.delete("m3")
    db.update_fields("m4", {"user_id": "b"})
    db = store.settle()
    ids = [f"m{i}" for i in (9, 0, 3, 4, 7, 2, 5)] + ["nobody", "m1"]
    cases = [
        {},
        {"where": {"user_id": "a"}},
        {"where": {"user_id": "b", "topic": "x"}},  # a tag column and a payload field
        {"kappa": (0.2, 0.6)},
        {"kind": "episode"},
        {"kind": ["episode", "fact"], "where": {"topic": "y"}},
        {"valid_at": t0 + timedelta(days=4, hours=1)},
        {"known_at": before_changes},  # m3 not deleted yet, m4 still user a
        {"known_at": before_changes, "where": {"user_id": "a"}, "kappa": (0.0, 0.45)},
    ]
    for filters in cases:
        got = db.matching(ids, **filters)
        assert got == _by_hand(db, ids, **filters), filters
    assert db.matching([], where={"user_id": "a"}) == []
    assert "m3" not in db.matching(ids) and "m3" in db.matching(ids, known_at=before_changes)
    with pytest.raises(errors.InvalidInput):
        db.matching(ids, kappa=(0.5, 0.1))
    with pytest.raises(errors.InvalidInput):
        db.matching([123])
