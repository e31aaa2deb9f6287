"""Keys: ``keys_of`` (the bulk form) equals ``key_of`` for UUIDs, other strings and non-ASCII ids."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
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


_HEXISH = "0123456789abcdefABCDEFg-é"


@given(
    st.lists(st.uuids().map(str), min_size=32, max_size=80),
    st.lists(st.text(_HEXISH, min_size=36, max_size=36), max_size=10),
    st.randoms(use_true_random=False),
)
def test_bulk_keys_of_36_character_ids_equal_single_keys(uuids, near, random):
    """From 32 ids of 36 characters the UUIDs are parsed together: near-UUIDs among them (upper case, a
    non-hex letter, a misplaced or missing hyphen, non-ASCII) are hashed as one at a time would."""
    ids = uuids + near
    ids += [u[:i] + c + u[i + 1 :] for u, i, c in zip(uuids, (0, 8, 13, 35, 23), "A-g_é", strict=False)]
    random.shuffle(ids)
    assert _pairs(ids) == [key_of(i) for i in ids]


@given(st.lists(st.text(min_size=1, max_size=40), max_size=20))
def test_bulk_keys_equal_single_keys_on_any_text(ids):
    assert _pairs(ids) == [key_of(i) for i in ids]


def test_seeded_ids_repeat_the_same_writes_ids(tmp_path):
    """Inside seeded_ids the same writes in the same order get the same ids (small and bulk batches), valid
    version-4 UUIDs; another seed gives others; outside it (and after it) ids are random again."""
    from t4dm.errors import InvalidInput
    from t4dm.storage import T4DX, Item
    from t4dm.storage.keys import new_ids, seeded_ids

    def write(path, seed):
        with T4DX.open(path, dim=4) as db, seeded_ids(seed):
            small = db.insert([Item(vector=np.ones(4)) for _ in range(3)])
            bulk = db.insert_batch(np.ones((40, 4), np.float32))
            return small + bulk

    first, again, other = write(tmp_path / "a", 7), write(tmp_path / "b", 7), write(tmp_path / "c", 8)
    assert first == again and len(set(first)) == 43
    assert not set(first) & set(other)
    assert all(uuid.UUID(i).version == 4 and uuid.UUID(i).variant == uuid.RFC_4122 for i in first)
    with seeded_ids(7):
        with seeded_ids(1):
            inner = new_ids(2)[0]
        assert new_ids(3)[0] == first[:3]  # the outer seed's generator is back, where it was
    assert inner != first[:2]
    assert new_ids(3)[0] != first[:3] and new_ids(40)[0] != new_ids(40)[0]  # random again
    for bad in ("7", 1.5, True):
        with pytest.raises(InvalidInput, match="seed"), seeded_ids(bad):  # type: ignore[arg-type]
            pass
