"""The :class:`Item` record and the conversion of times to the engine's int64 microseconds."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from t4dm.errors import InvalidTime

__all__ = ["OPEN", "UTC", "Change", "Edge", "Hit", "Item", "from_us", "to_us"]

UTC = timezone.utc
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Stored in ``valid_to`` / ``superseded_at`` for an interval that is still open ("until further notice").
OPEN = np.iinfo(np.int64).max
_ONE_US = timedelta(microseconds=1)


def to_us(value: datetime, field: str) -> int:
    """Microseconds since 1970-01-01 UTC of a timezone-aware datetime; naive ones are refused."""
    if not isinstance(value, datetime):
        raise InvalidTime(field, value, "expected a timezone-aware datetime")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidTime(field, value, "naive datetime: give a timezone (e.g. tzinfo=timezone.utc)")
    return (value - EPOCH) // _ONE_US


_DATETIMES: dict[int, datetime] = {}


def from_us(us: int) -> datetime | None:
    """The UTC datetime of ``us`` microseconds since the epoch; ``None`` for :data:`OPEN`.

    Conversions are cached: the rows of one write share their transaction time, and reads turn the
    same few times into datetimes again and again (a cache hit costs ~50 ns, a conversion ~1.3 µs).
    """
    if us == OPEN:
        return None
    value = _DATETIMES.get(us)
    if value is None:
        if len(_DATETIMES) >= 65536:
            _DATETIMES.clear()
        value = _DATETIMES[us] = EPOCH + timedelta(0, 0, int(us))
    return value


@dataclass(slots=True, eq=False)
class Item:
    """One memory: a vector with a consolidation level, a kind, JSON-like fields and bitemporal times.

    ``Item(vector=v)`` alone is valid. ``id`` is assigned (a UUID string) at insert when ``None``.
    ``valid_from`` / ``valid_to`` are valid time (when it was true in the world; ``valid_from`` defaults
    to the insert time, ``valid_to`` ``None`` means open-ended); ``recorded_at`` / ``superseded_at`` are
    transaction time (when the store learnt it and when a newer version replaced it). Transaction times
    are assigned by the store and are ``None`` on items you build yourself. All times are
    timezone-aware UTC datetimes with microsecond resolution.
    """

    vector: Any
    id: str | None = None
    kappa: float = 0.0
    kind: str = "episode"
    fields: dict[str, Any] = field(default_factory=dict)
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    recorded_at: datetime | None = None
    superseded_at: datetime | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Item):
            return NotImplemented
        return (
            self.id == other.id
            and self.kappa == other.kappa
            and self.kind == other.kind
            and self.fields == other.fields
            and self.valid_from == other.valid_from
            and self.valid_to == other.valid_to
            and self.recorded_at == other.recorded_at
            and self.superseded_at == other.superseded_at
            and np.array_equal(np.asarray(self.vector), np.asarray(other.vector))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shape = getattr(self.vector, "shape", None)
        return (
            f"Item(id={self.id!r}, kappa={self.kappa!r}, kind={self.kind!r}, fields={self.fields!r}, "
            f"vector=<{shape}>, valid_from={self.valid_from}, valid_to={self.valid_to}, "
            f"recorded_at={self.recorded_at}, superseded_at={self.superseded_at})"
        )


@dataclass(slots=True)
class Edge:
    """A directed, weighted relation between two items, with valid time and transaction time.

    ``weight`` is the effective weight (batch scales included). ``valid_from`` defaults to the insert
    time; ``recorded_at`` / ``superseded_at`` are assigned by the store.
    """

    src: str
    dst: str
    rel: str = "related"
    weight: float = 1.0
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    recorded_at: datetime | None = None
    superseded_at: datetime | None = None


class Hit:
    """One search result: the item's id, its cosine similarity to the query, and the item.

    A search builds the items of its hits only when one is first read (``hit.item``), and then those of all
    the hits from the same place at once: a caller that wants ids and scores pays for neither the payloads
    nor the vectors. The item is the version the search saw, whatever the store has done since.
    """

    __slots__ = ("_id", "_index", "_item", "_load", "_score")

    def __init__(self, id: str, score: float, item: Item | None = None, *, load: Any = None, index: int = 0):
        if item is None and load is None:
            raise TypeError("Hit needs an item (or, from a search, a loader)")
        self._id, self._score, self._item, self._load, self._index = id, score, item, load, index

    @property
    def id(self) -> str:
        return self._id

    @property
    def score(self) -> float:
        return self._score

    @property
    def item(self) -> Item:
        item = self._item
        if item is None:  # safe from several threads: the loader keeps its source and returns the same item
            item = self._item = self._load(self._index)
        return item

    @staticmethod
    def load(hits: Iterable[Hit]) -> list[Item]:
        """The items of ``hits``, in order, building only those not built yet: the hits of one search and
        place together, and none of that search's other hits (``hit.item`` builds them all at once), for a
        caller that keeps a few of many hits."""
        hits = list(hits)
        wanted: dict[int, tuple[Any, list[Hit]]] = {}
        for hit in hits:
            if hit._item is None:
                wanted.setdefault(id(hit._load), (hit._load, []))[1].append(hit)
        for load, group in wanted.values():
            for hit, item in zip(group, load.some([h._index for h in group]), strict=True):
                hit._item = item
        return [hit.item for hit in hits]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Hit):
            return NotImplemented
        return self._id == other._id and self._score == other._score and self.item == other.item

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Hit(id={self._id!r}, score={self._score!r})"


@dataclass(frozen=True, slots=True)
class KappaUpdate:
    """A κ overlay as a change (:meth:`~t4dm.storage.T4DX.changes`): the live version of item ``id`` had its
    consolidation level set to ``kappa`` at ``recorded_at``, in place (UPDATE_KAPPA, or a compaction policy such
    as consolidation)."""

    id: str
    kappa: float
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WeightScale:
    """A BATCH_SCALE_WEIGHTS as a change (:meth:`~t4dm.storage.T4DX.changes`): every edge of relation ``rel``
    (None: of every relation) had its weight multiplied by ``factor`` at ``recorded_at``."""

    factor: float
    rel: str | None = None
    recorded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of a store's history (:meth:`~t4dm.storage.T4DX.changes`), at ``record.recorded_at``:

    - ``op="put"``: a version of an item or an edge written (``record``: the :class:`Item` or :class:`Edge`
      version as the store holds it now, ``superseded_at`` included);
    - ``op="delete"``: an item deleted or an edge removed (``record`` names it: an item's ``vector`` is None,
      its ``fields`` empty);
    - ``op="weight"``: an edge's weight set (UPDATE_EDGE_WEIGHT; ``record``: the :class:`Edge` with the
      weight it then had);
    - ``op="scale"``: BATCH_SCALE_WEIGHTS (``record``: a :class:`WeightScale`);
    - ``op="kappa"``: an item's κ set in place (UPDATE_KAPPA, or a compaction policy; ``record``: a
      :class:`KappaUpdate`).

    ``seq`` is the store's write sequence number (the order of the changes; changes of one transaction share
    ``recorded_at``). Weights are not versions: a ``weight`` change has the weight that update set; a
    ``put`` of an edge has the edge's present weight less the scales written after it (a later ``weight``
    change repeats the value it set), so a replay ends with the store's weights. Nor is κ: an item's ``put``
    has its version's present κ, and a later ``kappa`` change repeats the value it set.
    """

    seq: int
    op: str
    record: Item | Edge | WeightScale | KappaUpdate

    @property
    def recorded_at(self) -> datetime | None:
        return self.record.recorded_at
