"""T4DX: the embedded, bitemporal LSM storage engine of T4DM (``t4dm.storage``).

    from t4dm.storage import T4DX, Item
    with T4DX.open("./store", dim=384) as db:
        [id] = db.insert(Item(vector=v, fields={"text": "hello", "user_id": "u1"}))
        db.get(id)

See :class:`T4DX` for the primitives and ``docs/storage.md`` for the design.
"""

from __future__ import annotations

from .bloom import BloomFilter
from .compaction import CompactionPolicy, MergedRows
from .engine import T4DX, CompactionStats
from .item import UTC, Change, Edge, Hit, Item, KappaUpdate, WeightScale
from .vector_index import HNSWParams
from .wal import TornWALWarning

__all__ = [
    "T4DX",
    "UTC",
    "BloomFilter",
    "Change",
    "CompactionPolicy",
    "CompactionStats",
    "Edge",
    "HNSWParams",
    "Hit",
    "Item",
    "KappaUpdate",
    "MergedRows",
    "TornWALWarning",
    "WeightScale",
]
