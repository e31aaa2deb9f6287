"""Keys: ``keys_of`` (the bulk form) equals ``key_of`` for UUIDs, other strings and non-ASCII ids."""

from __future__ import annotations

import uuid

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from t4dm.storage.keys import key_of, keys_of


def _pairs(ids: list[str]) -> list[tuple[int, int]]:
    hi, lo = keys_of(ids)
    assert hi.dtype == np.uint64 and lo.dtype == np.uint64 and len(hi) == len(ids)
    return [(int(a), int(b)) for a, b in zip(hi, lo, strict=True)]


def test_bulk_keys_equal_single_keys():
    ids = [str(uuid.uuid4()) for _ in range(50)] + ["n1", "é漢字", "A" * 36, "x", str(uuid.uuid4()).upper()]
    assert _pairs(ids) == [key_of(i) for i in ids]
    assert _pairs([]) == []
    # a UUID's key is its 128 bits
    u = uuid.uuid4()
    assert _pairs([str(u)]) == [(u.int >> 64, u.int & ((1 << 64) - 1))]


@given(st.lists(st.text(min_size=1, max_size=40), max_size=20))
def test_bulk_keys_equal_single_keys_on_any_text(ids):
    assert _pairs(ids) == [key_of(i) for i in ids]
