"""Graph traversal in Numba: breadth-first expansion over each source's sorted adjacency.

Edges are rows (``FLAG_EDGE``) of the memtable and the segments. A segment stores its edge rows' order by
source key and by destination key (``out_order`` / ``in_order`` with the sorted keys beside them): a
CSR without a node table, since nodes are 128-bit keys shared by every segment. One hop looks each
frontier key up in every source (binary search), walks its edges, keeps those visible in the snapshot
and passing the filters, and offers their far ends to a visited set (an open-addressing hash table of
128-bit keys). The frontier of the next hop is what the table did not hold yet.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numba
import numpy as np

from t4dm.errors import InvalidInput

from .item import OPEN, Edge, from_us, to_us
from .keys import EDGE_PREFIX, keys_of
from .memtable import Memtable
from .rows import FLAG_EDGE, FLAG_OVERLAY

__all__ = ["VisitedSet", "breadth_first", "expand", "graph_plan", "neighbour_edges", "sorted_adjacency"]

_EMPTY = np.uint64(0xFFFFFFFFFFFFFFFF)


@numba.njit(cache=True, nogil=True)
def _lower(keys_hi, keys_lo, order, hi, lo):
    a, b = 0, order.shape[0]
    while a < b:
        m = (a + b) >> 1
        r = order[m]
        if keys_hi[r] < hi or (keys_hi[r] == hi and keys_lo[r] < lo):
            a = m + 1
        else:
            b = m
    return a


@numba.njit(cache=True, nogil=True)
def _expand(
    f_hi, f_lo,  # frontier keys
    near_hi, near_lo, far_hi, far_lo, order,  # edge endpoints; order sorts the rows by (near key)
    flags, seq, next_seq, recorded_at, superseded_at, valid_from, valid_to, kind, weight,
    snap_seq, check_seq, known_us, valid_us, rel_ok, min_weight, scale_all, rel_scale,
    out_hi, out_lo, out_w, out_row,
):  # fmt: skip
    """Append the far ends of the visible edges leaving each frontier key; returns the count written.

    An edge row is visible when it is an edge version (not a tombstone or overlay) live in the snapshot
    (``next_seq > snap_seq``; rows newer than ``snap_seq`` skipped when ``check_seq``), or, with
    ``known_us >= 0``, the version known at that transaction time; and, with ``valid_us`` set, valid
    then. ``rel_ok[kind]`` filters relations; the effective weight ``weight · scale_all · rel_scale[kind]``
    must reach ``min_weight``.
    """
    count = 0
    for i in range(f_hi.shape[0]):
        hi, lo = f_hi[i], f_lo[i]
        j = _lower(near_hi, near_lo, order, hi, lo)
        while j < order.shape[0]:
            r = order[j]
            if near_hi[r] != hi or near_lo[r] != lo:
                break
            j += 1
            if (flags[r] & 7) != 2:  # an edge version: not a tombstone (1), not an overlay (4)
                continue
            if check_seq and seq[r] > snap_seq:
                continue
            if known_us >= 0:
                if recorded_at[r] > known_us or (superseded_at[r] <= known_us and next_seq[r] <= snap_seq):
                    continue
            elif next_seq[r] <= snap_seq:
                continue
            if valid_us != -9223372036854775808 and (valid_from[r] > valid_us or valid_to[r] <= valid_us):
                continue
            k = kind[r]
            if not rel_ok[k]:
                continue
            w = weight[r] * scale_all * rel_scale[k]
            if w < min_weight:
                continue
            if count == out_hi.shape[0]:
                return -1  # out of room: the caller grows the buffers and calls again
            out_hi[count] = far_hi[r]
            out_lo[count] = far_lo[r]
            out_w[count] = w
            out_row[count] = r
            count += 1
    return count


def expand(step: _Step, frontier: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """One hop from ``frontier`` in one source: far keys, effective weights and the rows followed."""
    src = step.source
    n = step.n
    far = "dst" if step.near == "src" else "src"
    cap = max(64, 16 * len(frontier[0]))
    while True:
        out_hi = np.empty(cap, dtype=np.uint64)
        out_lo = np.empty(cap, dtype=np.uint64)
        out_w = np.empty(cap, dtype=np.float64)
        out_row = np.empty(cap, dtype=np.int64)
        count = _expand(
            frontier[0], frontier[1],
            getattr(src, f"{step.near}_hi")[:n], getattr(src, f"{step.near}_lo")[:n],
            getattr(src, f"{far}_hi")[:n], getattr(src, f"{far}_lo")[:n], step.order,
            src.flags[:n], src.seq[:n], src.next_seq[:n], src.recorded_at[:n], src.superseded_at[:n],
            src.valid_from[:n], src.valid_to[:n], src.kind[:n], src.weight[:n],
            np.uint64(step.snap_seq), step.check_seq, np.int64(step.known_us), np.int64(step.valid_us),
            step.rel_ok, float(step.min_weight), float(step.scale_all), step.rel_scale,
            out_hi, out_lo, out_w, out_row,
        )  # fmt: skip
        if count >= 0:
            return out_hi[:count], out_lo[:count], out_w[:count], out_row[:count]
        cap *= 4


def sorted_adjacency(near_hi: np.ndarray, near_lo: np.ndarray, is_edge: np.ndarray) -> np.ndarray:
    """The edge rows (``is_edge``) ordered by their near endpoint's key: the adjacency permutation."""
    rows = np.flatnonzero(is_edge)
    return rows[np.lexsort((near_lo[rows], near_hi[rows]))].astype(np.int64)


# ---------------------------------------------------------------------- visited set
@numba.njit(cache=True, nogil=True)
def _slot(table_hi, table_lo, hi, lo):
    mask = table_hi.shape[0] - 1
    h = (hi ^ (lo * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xBF58476D1CE4E5B9)
    i = np.int64((h >> np.uint64(17)) & np.uint64(mask))
    while True:
        if table_hi[i] == _EMPTY and table_lo[i] == _EMPTY:
            return i, False
        if table_hi[i] == hi and table_lo[i] == lo:
            return i, True
        i = (i + 1) & mask


@numba.njit(cache=True, nogil=True)
def _offer(
    table_hi, table_lo, table_hops, table_weight, table_via, c_hi, c_lo, c_w, c_via, hops, new_hi, new_lo
):
    """Insert the candidate keys not yet visited (at ``hops``); keep each key's best weight (and the
    edge row ``via`` that gave it).

    Returns how many were new (written to ``new_hi`` / ``new_lo``), or -1 if the table filled up.
    """
    fresh = 0
    capacity = table_hi.shape[0]
    for i in range(c_hi.shape[0]):
        slot, found = _slot(table_hi, table_lo, c_hi[i], c_lo[i])
        if found:
            if table_hops[slot] == hops and c_w[i] > table_weight[slot]:
                table_weight[slot] = c_w[i]
                table_via[slot] = c_via[i]
            continue
        table_hi[slot] = c_hi[i]
        table_lo[slot] = c_lo[i]
        table_hops[slot] = hops
        table_weight[slot] = c_w[i]
        table_via[slot] = c_via[i]
        new_hi[fresh] = c_hi[i]
        new_lo[fresh] = c_lo[i]
        fresh += 1
        if (np.int64(fresh) + 1) * 2 > capacity:
            return -1
    return fresh


class VisitedSet:
    """Keys reached so far, with the hop count and best edge weight that reached each."""

    def __init__(self, expected: int = 1024) -> None:
        self._alloc(max(1024, 1 << int(4 * expected).bit_length()))
        self.size = 0

    def _alloc(self, capacity: int) -> None:
        self.hi = np.full(capacity, _EMPTY, dtype=np.uint64)
        self.lo = np.full(capacity, _EMPTY, dtype=np.uint64)
        self.hops = np.zeros(capacity, dtype=np.int64)
        self.weight = np.zeros(capacity, dtype=np.float64)
        self.via = np.full(capacity, -1, dtype=np.int64)

    def offer(
        self, hi: np.ndarray, lo: np.ndarray, weight: np.ndarray, hops: int, via: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the keys not seen before; return them (the next frontier). ``via`` tags each candidate
        with where it came from (kept for the best-weight one)."""
        while 2 * (self.size + len(hi) + 1) > self.hi.shape[0]:
            self._grow()
        if via is None:
            via = np.full(len(hi), -1, dtype=np.int64)
        new_hi = np.empty(len(hi), dtype=np.uint64)
        new_lo = np.empty(len(hi), dtype=np.uint64)
        fresh = _offer(
            self.hi, self.lo, self.hops, self.weight, self.via, hi, lo, weight, via, hops, new_hi, new_lo
        )
        if fresh < 0:  # cannot happen with the sizing above; kept as a guard
            raise RuntimeError("visited set overflow")
        self.size += fresh
        return new_hi[:fresh], new_lo[:fresh]

    def _grow(self) -> None:
        keep = (self.hi != _EMPTY) | (self.lo != _EMPTY)
        old = (self.hi[keep], self.lo[keep], self.hops[keep], self.weight[keep], self.via[keep])
        self._alloc(self.hi.shape[0] * 4)
        self.size = 0
        for hop in np.unique(old[2]):
            sel = old[2] == hop
            self.offer(old[0][sel], old[1][sel], old[3][sel], int(hop), old[4][sel])

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        keep = (self.hi != _EMPTY) | (self.lo != _EMPTY)
        return self.hi[keep], self.lo[keep], self.hops[keep], self.weight[keep], self.via[keep]


# ---------------------------------------------------------------------- planning and walking
@dataclass(frozen=True, slots=True)
class _Step:
    """One source's part of a traversal: its adjacency and the filters in the form ``_expand`` takes."""

    source: Any
    n: int
    near: str
    order: np.ndarray
    snap_seq: int
    check_seq: bool
    known_us: int
    valid_us: int
    rel_ok: np.ndarray
    min_weight: float
    scale_all: float
    rel_scale: np.ndarray


_NO_TIME = int(np.iinfo(np.int64).min)


def graph_plan(
    sources: Iterable[tuple[Any, int]],
    snap: Any,
    direction: str,
    rel: str | Iterable[str] | None,
    min_weight: float,
    known_at: datetime | None,
    valid_at: datetime | None,
) -> list[_Step]:
    """Check the traversal filters and prepare one :class:`_Step` per source holding edges."""
    if direction not in ("out", "in"):
        raise InvalidInput("direction", direction, "expected 'out' or 'in'")
    if rel is not None and not isinstance(rel, str):
        rel = list(rel)
        for r in rel:
            if not isinstance(r, str):
                raise InvalidInput("rel", r, "expected a relation name")
    rels = None if rel is None else ({rel} if isinstance(rel, str) else set(rel))
    known_us = -1 if known_at is None else to_us(known_at, "known_at")
    valid_us = _NO_TIME if valid_at is None else to_us(valid_at, "valid_at")
    near = "src" if direction == "out" else "dst"
    steps = []
    for source, n in sources:
        if n == 0:
            continue
        if isinstance(source, Memtable):
            order, check_seq = _memtable_adjacency(source, n, near), True
        else:
            order, check_seq = (source.out_order if near == "src" else source.in_order), False
        if order.size == 0:
            continue
        kinds = source.kinds
        rel_ok = np.array([rels is None or k in rels for k in kinds] + [False], dtype=np.bool_)
        rel_scale = np.array([snap.scales.get(k, 1.0) for k in kinds] + [1.0])
        steps.append(
            _Step(source, n, near, order, snap.seq, check_seq, known_us, valid_us, rel_ok, min_weight,
                  snap.scales.get("*", 1.0), rel_scale)
        )  # fmt: skip
    return steps


def _memtable_adjacency(mem: Memtable, n: int, near: str) -> np.ndarray:
    """The memtable's edge rows ordered by ``near`` key, cached for its current row count."""
    cached = mem.adjacency.get((near, n))
    if cached is None:
        is_edge = (mem.flags[:n] & (FLAG_EDGE | FLAG_OVERLAY)) == FLAG_EDGE
        cached = sorted_adjacency(getattr(mem, f"{near}_hi")[:n], getattr(mem, f"{near}_lo")[:n], is_edge)
        mem.adjacency = {**{k: v for k, v in mem.adjacency.items() if k[0] != near}, (near, n): cached}
    return cached


def _far_id(source: Any, row: int, near: str) -> str:
    src, _, dst = source.id_at(row)[len(EDGE_PREFIX) :].split("\x1f")
    return dst if near == "src" else src


def breadth_first(steps: list[_Step], seeds: list[str], depth: int) -> dict[str, tuple[int, float]]:
    """``{id: (hops, weight)}`` of everything reached from ``seeds`` within ``depth`` hops (seeds: 0, inf)."""
    hi, lo = keys_of(seeds)
    visited = VisitedSet(len(seeds))
    frontier = visited.offer(hi, lo, np.full(len(hi), math.inf), 0)
    for hop in range(1, depth + 1):
        if not len(frontier[0]) or not steps:
            break
        found = [expand(step, frontier) for step in steps]
        via = np.concatenate([f[3] * len(steps) + i for i, f in enumerate(found)])  # row and step in one
        frontier = visited.offer(
            np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found]),
            np.concatenate([f[2] for f in found]), hop, via,
        )  # fmt: skip
    key_hi, key_lo, hops, weight, via = visited.items()
    named = dict(zip(zip(hi.tolist(), lo.tolist(), strict=True), seeds, strict=True))
    out: dict[str, tuple[int, float]] = {}
    for h, k, hop, w, v in zip(
        key_hi.tolist(), key_lo.tolist(), hops.tolist(), weight.tolist(), via.tolist(), strict=True
    ):
        name = (
            named.get((h, k))
            if hop == 0
            else _far_id(steps[v % len(steps)].source, v // len(steps), steps[0].near)
        )
        out[name] = (hop, w)
    return out


def neighbour_edges(steps: list[_Step], id: str) -> list[Edge]:
    """The visible edges at ``id`` (leaving it when the plan walks out, reaching it when in)."""
    frontier = keys_of([id])
    edges = []
    for step in steps:
        _, _, weights, rows = expand(step, frontier)
        source = step.source
        for row, w in zip(rows.tolist(), weights.tolist(), strict=True):
            src, rel, dst = source.id_at(row)[len(EDGE_PREFIX) :].split("\x1f")
            superseded = int(source.superseded_at[row]) if source.next_seq[row] <= step.snap_seq else OPEN
            edges.append(
                Edge(src, dst, rel, w, from_us(int(source.valid_from[row])), from_us(int(source.valid_to[row])),
                     from_us(int(source.recorded_at[row])), from_us(superseded))
            )  # fmt: skip
    return edges
