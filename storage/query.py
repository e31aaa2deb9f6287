"""Filters, their planning against a source's indexes, and vector search over one source.

A :class:`Filter` is parsed once per call. :func:`match_rows` finds the rows of one source (the
memtable or a segment) that pass it: on a segment it starts from the smallest candidate set one of the
secondary indexes gives (κ range, valid-from range, a tag value), then checks every other predicate
on those rows only. :func:`search_source` scores a source's matching rows against a query, exactly or
through the segment's HNSW index with an ID selector, whichever is cheaper for that many rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import faiss
import msgpack
import numba
import numpy as np

from t4dm.errors import InvalidInput, PayloadNotSerializable

from .item import to_us
from .memtable import Memtable
from .rows import NO_SEQ, NOT_ITEM, TAG_FIELDS, TAG_OTHER
from .segment import Segment
from .vector_index import selector_for

__all__ = ["Filter", "match_rows", "parse_filter", "search_source", "unpack"]

_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


def unpack(raw: bytes) -> Any:
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class Filter(NamedTuple):
    """Parsed filters; every field None (or empty) means "no condition"."""

    kappa: tuple[float, float] | None = None
    kinds: list[str] | None = None
    conditions: list[tuple[str, Any]] = []  # noqa: RUF012 - a NamedTuple default, never mutated
    valid_us: int | None = None
    known_us: int | None = None
    valid_from: tuple[int, int] | None = None  # [lo, hi) in µs
    history: bool = False  # every version the store holds, not only the live (or ``known_us``) ones

    @property
    def empty(self) -> bool:
        return (
            self.kappa is None
            and self.kinds is None
            and not self.conditions
            and self.valid_us is None
            and self.known_us is None
            and self.valid_from is None
            and not self.history
        )


def parse_filter(
    kappa: Any = None,
    kind: Any = None,
    where: Any = None,
    valid_at: Any = None,
    known_at: Any = None,
    valid_from: Any = None,
    history: Any = False,
) -> Filter:
    """Check and normalise the filter arguments of ``scan`` / ``search`` / ``count`` (typed errors)."""
    if kappa is not None:
        try:
            lo, hi = (float(kappa[0]), float(kappa[1]))
        except (TypeError, ValueError, IndexError) as exc:
            raise InvalidInput("kappa", kappa, "expected a (lo, hi) pair of numbers") from exc
        if len(kappa) != 2 or not 0.0 <= lo <= hi <= 1.0:
            raise InvalidInput("kappa", kappa, "expected 0 <= lo <= hi <= 1")
        kappa = (lo, hi)
    kinds: list[str] | None = None
    if kind is not None:
        try:
            kinds = [kind] if isinstance(kind, str) else list(kind)
        except TypeError as exc:
            raise InvalidInput("kind", kind, "expected a string or a list of strings") from exc
        for k in kinds:
            if not isinstance(k, str):
                raise InvalidInput("kind", k, "expected a string")
    conditions: list[tuple[str, Any]] = []
    if where is not None:
        if not isinstance(where, Mapping):
            raise InvalidInput("where", where, "expected a dict of field: value")
        for name, value in where.items():
            if not isinstance(name, str):
                raise InvalidInput("where", name, "field names must be strings")
            try:
                conditions.append((name, unpack(_pack(value))))  # the stored form: tuples become lists
            except (TypeError, ValueError, OverflowError) as exc:
                raise PayloadNotSerializable(f"where[{name!r}]", value, f"not JSON-like: {exc}") from exc
    range_us = None
    if valid_from is not None:
        try:
            start, end = valid_from
        except (TypeError, ValueError) as exc:
            raise InvalidInput("valid_from", valid_from, "expected a (start, end) pair of datetimes") from exc
        range_us = (to_us(start, "valid_from[0]"), to_us(end, "valid_from[1]"))
        if range_us[0] > range_us[1]:
            raise InvalidInput("valid_from", valid_from, "start must not be after end")
    if not isinstance(history, bool):
        raise InvalidInput("history", history, "expected True or False")
    if history and known_at is not None:
        raise InvalidInput("history", history, "every version, or those known at known_at: not both")
    return Filter(
        kappa=kappa,
        kinds=kinds,
        conditions=conditions,
        valid_us=None if valid_at is None else to_us(valid_at, "valid_at"),
        known_us=None if known_at is None else to_us(known_at, "known_at"),
        valid_from=range_us,
        history=history,
    )


def same(a: Any, b: Any) -> bool:
    """JSON-style equality: 1 == 1.0, but booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _empty() -> np.ndarray:
    return np.empty(0, dtype=np.int64)


def match_rows(
    source: Any, n: int, snap_seq: int, f: Filter, within: np.ndarray | None = None
) -> tuple[np.ndarray, list[tuple[str, Any]]]:
    """Rows of ``source[:n]`` (unordered; only among ``within``, int64 row numbers, when given) passing every
    column predicate of ``f`` in the snapshot ``snap_seq``, and the field conditions left to check on
    decoded payloads."""
    if n == 0:
        return _empty(), []
    payload_checks: list[tuple[str, Any]] = []
    tag_codes: list[tuple[int, int]] = []
    for name, value in f.conditions:
        if name in TAG_FIELDS:
            slot = TAG_FIELDS.index(name)
            code = source.tag_code(slot, value)
            if code is None:  # no row of this source has that value
                return _empty(), []
            tag_codes.append((slot, code))
            if code == TAG_OTHER:
                payload_checks.append((name, value))
        else:
            payload_checks.append((name, value))

    if within is not None:
        rows, covered = within, ()
    else:
        rows, covered = _candidates(source, f, tag_codes) if isinstance(source, Segment) else (None, ())

    def col(name: str) -> np.ndarray:
        values = getattr(source, name)[:n]
        return values if rows is None else values[rows]

    snap = np.uint64(snap_seq)
    live = (
        live_mask(source, snap_seq)
        if f.known_us is None and not f.history and isinstance(source, Segment)
        else None
    )
    if live is not None:  # cached: items only (no tombstones, edges or overlays), not superseded
        mask = live if rows is None else live[rows]
    else:
        mask = (col("flags") & NOT_ITEM) == 0
        if isinstance(source, Memtable):
            mask &= col("seq") <= snap
        if f.history:
            pass  # superseded versions too, and those of deleted ids (not their tombstones)
        elif f.known_us is None:
            mask &= col("next_seq") > snap
        else:
            mask &= (col("recorded_at") <= f.known_us) & (
                (col("superseded_at") > f.known_us) | (col("next_seq") > snap)
            )
    if f.kappa is not None and "kappa" not in covered:
        k = col("kappa")
        mask = mask & (k >= f.kappa[0]) & (k <= f.kappa[1])
    if f.valid_us is not None:
        if "valid_at_start" not in covered:
            mask = mask & (col("valid_from") <= f.valid_us)
        mask = mask & (col("valid_to") > f.valid_us)
    if f.valid_from is not None and "valid_from" not in covered:
        v = col("valid_from")
        mask = mask & (v >= f.valid_from[0]) & (v < f.valid_from[1])
    if f.kinds is not None:
        codes = [code for code in (source.kind_code(k) for k in f.kinds) if code is not None]
        mask = mask & np.isin(col("kind"), np.asarray(codes, dtype=np.uint16))
    for slot, code in tag_codes:
        if ("tag", slot) not in covered:
            tag = source.tags[:n, slot]
            mask = mask & ((tag if rows is None else tag[rows]) == code)
    selected = np.flatnonzero(mask)
    return (selected if rows is None else rows[selected]), payload_checks


_MIN_US, _MAX_US = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)


def _candidates(
    segment: Segment, f: Filter, tag_codes: list[tuple[int, int]]
) -> tuple[np.ndarray | None, tuple]:
    """The smallest row set a secondary index gives for ``f`` (None: no index applies), and the
    predicates every row of it satisfies (no need to check them again)."""
    options: list[tuple[np.ndarray, tuple]] = []
    if f.kappa is not None:
        options.append((segment.kappa_rows(*f.kappa), ("kappa",)))
    if f.valid_from is not None:
        options.append((segment.valid_from_rows(*f.valid_from), ("valid_from",)))
    if f.valid_us is not None:
        options.append((segment.valid_from_rows(_MIN_US, f.valid_us + 1), ("valid_at_start",)))
    # a tag with a valid-from bound: the composite (tag, valid_from) index gives the rows of both
    timed = f.valid_from is not None or f.valid_us is not None
    lo, hi = f.valid_from if f.valid_from is not None else (_MIN_US, _MAX_US)
    if f.valid_us is not None:
        hi = min(hi, f.valid_us + 1)
    timed_covers = (
        *(("valid_from",) if f.valid_from is not None else ()),
        *(("valid_at_start",) if f.valid_us is not None else ()),
    )
    for slot, code in tag_codes:
        both = segment.tag_valid_from_rows(slot, code, lo, hi) if timed else None
        if both is None:
            options.append((segment.tag_rows(slot, code), (("tag", slot),)))
        else:
            options.append((both, (("tag", slot), *timed_covers)))
    if not options:
        return None, ()
    best = min(options, key=lambda option: len(option[0]))
    return best if len(best[0]) < segment.n else (None, ())


def check_payloads(source: Any, rows: np.ndarray, checks: list[tuple[str, Any]]) -> np.ndarray:
    """``rows`` whose decoded fields satisfy every ``(name, value)`` equality."""
    if not checks or not rows.size:
        return rows
    keep = [
        all(name in fields and same(fields[name], value) for name, value in checks)
        for fields in map(unpack, source.fields_bytes_at(rows))
    ]
    return rows[np.asarray(keep, dtype=bool)]


def live_mask(segment: Segment, snap_seq: int) -> np.ndarray | None:
    """Per row of ``segment``: a live item in the snapshot (cached with :func:`live_rows`); None when
    the cache cannot serve this snapshot (the caller checks the columns instead)."""
    live_rows(segment, snap_seq)
    cache = segment.live_cache
    if cache is None or cache[0] != segment.mutations or segment.max_next_seq > snap_seq:
        return None
    if cache[3] is None:
        mask = np.zeros(segment.n, dtype=bool)
        mask[cache[1]] = True
        segment.live_cache = (*cache[:3], mask)
        return mask
    return cache[3]


def live_rows(segment: Segment, snap_seq: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows of ``segment`` live in the snapshot, and a label mask for HNSW (None: every label is live).

    Cached per segment: valid while the writer has not changed the segment's links since, and when
    every change it made is visible to the snapshot (otherwise computed afresh, not cached).
    """
    cache = segment.live_cache
    if cache is not None and cache[0] == segment.mutations and segment.max_next_seq <= snap_seq:
        return cache[1], cache[2]
    mutations, visible = segment.mutations, segment.max_next_seq <= snap_seq
    mask = (segment.flags & NOT_ITEM) == 0
    mask &= segment.next_seq > np.uint64(snap_seq) if not visible else segment.next_seq == NO_SEQ
    rows = np.flatnonzero(mask)
    labels = None
    if rows.size != segment.vectors.shape[0]:
        labels = np.zeros(segment.vectors.shape[0], dtype=bool)
        labels[segment.vector_row[rows]] = True
    if visible:
        segment.live_cache = (mutations, rows, labels, None)  # the row mask: made on first use
    return rows, labels


@numba.njit(cache=True, nogil=True, fastmath=True)
def _score_rows(vectors, vector_rows, inv_norm, query):  # pragma: no cover - compiled
    """Cosine score of each listed vector: one pass over just those vectors, no gathered copy."""
    out = np.empty(vector_rows.size, dtype=np.float32)
    dim = query.size
    for i in range(vector_rows.size):
        v = vector_rows[i]
        acc = np.float32(0.0)
        for j in range(dim):
            acc += vectors[v, j] * query[j]
        out[i] = acc * inv_norm[v]
    return out


def search_source(
    source: Any,
    rows: np.ndarray,
    query: np.ndarray,
    k: int,
    ef: int,
    exact: bool,
    min_index_rows: int,
    labels: np.ndarray | None = None,
    all_live: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` of ``rows`` by cosine similarity to the unit vector ``query``: ``(scores, rows)``.

    Exact (one matrix-vector product over the rows' vectors) for the memtable, for segments without an
    index, and when few rows match (at most ``min_index_rows``, or under 2 % of the segment, where the
    exact product costs less than a filtered graph walk and never misses); otherwise the segment's HNSW
    with an ID selector over the matching labels (none when ``all_live``), and ``efSearch`` raised as
    the filter gets more selective.
    """
    index = getattr(source, "index", None)
    m = source.vectors.shape[0] if isinstance(source, Segment) else int(rows.max(initial=-1)) + 1
    if exact or index is None or rows.size <= max(min_index_rows, 0.02 * m):
        vector_row = source.vector_row[rows]
        if rows.size * 4 >= m:  # most rows: one product over the whole block beats gathering them
            scores = ((source.vectors[:m] @ query) * source.inv_norm[:m])[vector_row]
        else:
            scores = _score_rows(source.vectors, vector_row, source.inv_norm, query)
        if scores.size > k:
            top = np.argpartition(-scores, k - 1)[:k]
            return scores[top], rows[top]
        return scores, rows
    fraction = rows.size / m
    ef_eff = int(min(1024, max(ef, k) / math.sqrt(max(fraction, 1e-3))))
    if all_live:
        params = faiss.SearchParametersHNSW(efSearch=ef_eff)
        keep = None
    else:
        if labels is None:
            labels = np.zeros(m, dtype=bool)
            labels[source.vector_row[rows]] = True
        selector, keep = selector_for(labels)
        params = faiss.SearchParametersHNSW(efSearch=ef_eff, sel=selector)
    distances, found = index.search(query[None, :], k, params=params)
    del keep  # the bitmap had to outlive the search
    hit = found[0] >= 0
    return distances[0][hit].astype(np.float32), source.row_of_vector[found[0][hit]]
