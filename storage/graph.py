"""Graph traversal in Numba: breadth-first expansion over each source's sorted adjacency.

Edges are rows (``FLAG_EDGE``) of the memtable and the segments. Each source has a CSR per direction
(:func:`build_adjacency`: its distinct near keys, offsets, and per entry the edge row and copies of its
immutable columns), stored in the segment file and built on demand for the memtable. Nodes are the
128-bit keys every source shares, so one hop looks each frontier key up in every source (binary
search in its node table), walks that node's entries, keeps those visible in the snapshot and passing
the filters, and offers their far ends to a visited set (an open-addressing hash table of 128-bit
keys). The frontier of the next hop is what the table did not hold yet.
"""

from __future__ import annotations

import math
from collections.abc import Callable, ItemsView, Iterable, Iterator, Mapping, ValuesView
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numba
import numpy as np

from t4dm.errors import InvalidInput

from .item import OPEN, Edge, from_us, to_us
from .keys import EDGE_PREFIX, EDGE_SEPARATOR, key_u64, keys_of
from .memtable import Memtable
from .rows import FLAG_EDGE, FLAG_OVERLAY

__all__ = [
    "ADJACENCY_COLUMNS",
    "ADJACENCY_EXTRA",
    "Reached",
    "VisitedSet",
    "breadth_first",
    "build_adjacency",
    "edge_rows_touching",
    "expand",
    "graph_plan",
    "mark_dirty",
    "neighbour_edges",
    "touching_rows",
]


# CSR of one source and one direction: the distinct near keys, where each one's entries start, and per
# entry the edge row plus copies of the row's immutable columns (contiguous, in entry order, so a walk
# reads memory in sequence). The mutable columns (next_seq, superseded_at, weight) are read through
# the row, and only when a walk needs them.
ADJACENCY_COLUMNS: dict[str, np.dtype] = {
    "node_hi": np.dtype(np.uint64),
    "node_lo": np.dtype(np.uint64),
    "offsets": np.dtype(np.int64),
    "rows": np.dtype(np.int64),
    "far_hi": np.dtype(np.uint64),
    "far_lo": np.dtype(np.uint64),
    "kind": np.dtype(np.uint16),
    "flags": np.dtype(np.uint8),
    "seq": np.dtype(np.uint64),
    "recorded_at": np.dtype(np.int64),
    "valid_from": np.dtype(np.int64),
    "valid_to": np.dtype(np.int64),
}
# per entry, the far node's index in the node table (segments written before it have none); int32 when the
# table has fewer than 2**31 nodes (segments written before that hold int64: both are read)
ADJACENCY_EXTRA: dict[str, np.dtype] = {"far_node": np.dtype(np.int64)}


def build_adjacency(columns: Any, n: int, near: str) -> dict[str, np.ndarray]:
    """The CSR (see ``ADJACENCY_COLUMNS``) of the edge rows among ``columns[:n]``, by ``near`` ("src"/"dst")."""
    far = "dst" if near == "src" else "src"
    col = (
        (lambda name: columns[name][:n])
        if isinstance(columns, dict)
        else (lambda name: getattr(columns, name)[:n])
    )
    flags = col("flags")
    rows = np.flatnonzero((flags & (FLAG_EDGE | FLAG_OVERLAY)) == FLAG_EDGE)
    near_hi, near_lo = col(f"{near}_hi")[rows], col(f"{near}_lo")[rows]
    order = np.lexsort((near_lo, near_hi))
    rows, near_hi, near_lo = rows[order], near_hi[order], near_lo[order]
    far_hi, far_lo = col(f"{far}_hi")[rows], col(f"{far}_lo")[rows]
    # The node table holds every endpoint (near or far), sorted; nodes with no entries of their own have
    # an empty range. Each entry also names its far node's index, so a walk inside one source can move
    # from node to node by index, with no key lookups.
    both_hi, both_lo = np.concatenate([near_hi, far_hi]), np.concatenate([near_lo, far_lo])
    order = np.lexsort((both_lo, both_hi))
    first = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        first[1:] = (both_hi[order][1:] != both_hi[order][:-1]) | (both_lo[order][1:] != both_lo[order][:-1])
    node_of = np.empty(len(order), dtype=np.int64)
    node_of[order] = np.cumsum(first) - 1
    nodes = order[first]
    near_node, far_node = node_of[: len(rows)], node_of[len(rows) :]
    if len(nodes) < 2**31:  # half the bytes per entry for the walk's one random read per edge
        far_node = far_node.astype(np.int32)
    offsets = np.searchsorted(near_node, np.arange(len(nodes) + 1, dtype=np.int64)).astype(np.int64)
    return {
        "node_hi": both_hi[nodes],
        "node_lo": both_lo[nodes],
        "offsets": offsets,
        "rows": rows.astype(np.int64),
        "far_hi": far_hi,
        "far_lo": far_lo,
        "far_node": far_node,
        "kind": col("kind")[rows],
        "flags": flags[rows],
        "seq": col("seq")[rows],
        "recorded_at": col("recorded_at")[rows],
        "valid_from": col("valid_from")[rows],
        "valid_to": col("valid_to")[rows],
    }


@numba.njit(cache=True, nogil=True)
def _find(node_hi, node_lo, hi, lo):
    a, b = 0, node_hi.shape[0]
    while a < b:
        m = (a + b) >> 1
        if node_hi[m] < hi or (node_hi[m] == hi and node_lo[m] < lo):
            a = m + 1
        else:
            b = m
    if a < node_hi.shape[0] and node_hi[a] == hi and node_lo[a] == lo:
        return a
    return -1


@numba.njit(cache=True, nogil=True)
def _expand(
    f_hi, f_lo,  # frontier keys
    node_hi, node_lo, offsets, rows, far_hi, far_lo, kind, flags, seq, recorded_at, valid_from, valid_to,  # CSR
    next_seq, superseded_at, weight,  # mutable columns, indexed by row
    snap_seq, check_seq, dirty, known_us, valid_us, rel_ok, min_weight, need_weight, scale_all, rel_scale,
    out_hi, out_lo, out_w, out_row,
):  # fmt: skip
    """Append the far ends of the visible edges at each frontier key; returns the count written.

    An entry is followed when it is an edge version (not a tombstone or overlay) live in the snapshot
    (``next_seq > snap_seq``, not even read when the node is not ``dirty``: none of its rows superseded;
    rows newer than ``snap_seq`` skipped when ``check_seq``), or, with ``known_us >= 0``, the version
    known at that transaction time; and, with ``valid_us`` set, valid then. ``rel_ok[kind]`` filters
    relations; the effective weight ``weight · scale_all · rel_scale[kind]`` (read only when
    ``need_weight``) must reach ``min_weight``.
    """
    count = 0
    for i in range(f_hi.shape[0]):
        node = _find(node_hi, node_lo, f_hi[i], f_lo[i])
        if node < 0:
            continue
        links_clean = dirty[node] == 0
        for e in range(offsets[node], offsets[node + 1]):
            if (flags[e] & 7) != 2:  # an edge version: not a tombstone (1), not an overlay (4)
                continue
            if check_seq and seq[e] > snap_seq:
                continue
            k = kind[e]
            if not rel_ok[k]:
                continue
            if valid_us != -9223372036854775808 and (valid_from[e] > valid_us or valid_to[e] <= valid_us):
                continue
            r = rows[e]
            if known_us >= 0:
                if recorded_at[e] > known_us or (superseded_at[r] <= known_us and next_seq[r] <= snap_seq):
                    continue
            elif not links_clean and next_seq[r] <= snap_seq:
                continue
            w = 1.0
            if need_weight:
                w = weight[r] * scale_all * rel_scale[k]
                if w < min_weight:
                    continue
            if count == out_hi.shape[0]:
                return -1  # out of room: the caller grows the buffers and calls again
            out_hi[count] = far_hi[e]
            out_lo[count] = far_lo[e]
            out_w[count] = w
            out_row[count] = r
            count += 1
    return count


def expand(step: _Step, frontier: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, ...]:
    """One hop from ``frontier`` in one source: far keys, effective weights and the rows followed."""
    src, adj = step.source, step.adjacency
    if len(frontier[0]) > 64:  # sorted keys: successive node-table searches touch nearby memory
        order = np.lexsort((frontier[1], frontier[0]))
        frontier = (frontier[0][order], frontier[1][order])
    degree = max(1.0, len(adj["rows"]) / max(1, len(adj["node_hi"])))
    cap = max(64, int(2 * degree * len(frontier[0])))
    while True:
        out_hi = np.empty(cap, dtype=np.uint64)
        out_lo = np.empty(cap, dtype=np.uint64)
        out_w = np.empty(cap, dtype=np.float64)
        out_row = np.empty(cap, dtype=np.int64)
        count = _expand(
            frontier[0], frontier[1], *(adj[name] for name in ADJACENCY_COLUMNS),
            src.next_seq, src.superseded_at, src.weight,
            np.uint64(step.snap_seq), step.check_seq, step.dirty, np.int64(step.known_us),
            np.int64(step.valid_us), step.rel_ok, float(step.min_weight), step.need_weight,
            float(step.scale_all), step.rel_scale, out_hi, out_lo, out_w, out_row,
        )  # fmt: skip
        if count >= 0:
            return out_hi[:count], out_lo[:count], out_w[:count], out_row[:count]
        cap *= 4


@numba.njit(cache=True, nogil=True)
def _bfs_nodes(
    seeds, depth,  # seed node indices (distinct), hops to walk
    offsets, far_node, rows, kind, flags, seq, recorded_at, valid_from, valid_to,  # CSR by node index
    next_seq, superseded_at, weight,  # mutable columns, indexed by row
    snap_seq, check_seq, dirty, known_us, valid_us, rel_ok, min_weight, need_weight, scale_all, rel_scale,
    hops, place, order, best_w, via,  # per node: hops (-1: not reached), place in the reach order (with
):  # weights only); per place: the node, its best weight and the edge row that reached it  # fmt: skip
    """Breadth-first inside one source by node index (no key lookups, a visited array instead of a hash
    set); the same edge filters as :func:`_expand`. Returns how many nodes ``order`` holds.

    The walk is bound by random reads: ``hops`` is the only per-node array read for every edge, so it is
    kept small (int8 for depth < 127: a million nodes fit in the cache); what is written per reached node
    (``order``, ``best_w``, ``via``) goes to consecutive places; ``place`` (a node's place, to keep the
    heaviest of several edges reaching it at the same hop) is touched only when weights are read."""
    count = 0
    for s in seeds:
        if hops[s] < 0:
            hops[s] = 0
            if need_weight:
                place[s] = count
            order[count] = s
            best_w[count] = np.inf
            via[count] = -1
            count += 1
    start = 0
    for hop in range(1, depth + 1):
        end = count
        if start == end:
            break
        for q in range(start, end):
            node = order[q]
            links_clean = dirty[node] == 0
            for e in range(offsets[node], offsets[node + 1]):
                if (flags[e] & 7) != 2:
                    continue
                if check_seq and seq[e] > snap_seq:
                    continue
                k = kind[e]
                if not rel_ok[k]:
                    continue
                if valid_us != -9223372036854775808 and (valid_from[e] > valid_us or valid_to[e] <= valid_us):
                    continue
                if known_us >= 0:
                    r = rows[e]
                    if recorded_at[e] > known_us or (
                        superseded_at[r] <= known_us and next_seq[r] <= snap_seq
                    ):
                        continue
                elif not links_clean and next_seq[rows[e]] <= snap_seq:
                    continue
                f = far_node[e]
                h = hops[f]
                if h >= 0 and (h != hop or not need_weight):
                    continue  # reached before (the usual case: decided by the one small array)
                w = 1.0
                if need_weight:
                    w = weight[rows[e]] * scale_all * rel_scale[k]
                    if w < min_weight:
                        continue
                if h < 0:
                    hops[f] = hop
                    if need_weight:
                        place[f] = count
                    order[count] = f
                    best_w[count] = w
                    via[count] = rows[e]
                    count += 1
                elif w > best_w[place[f]]:
                    best_w[place[f]] = w
                    via[place[f]] = rows[e]
        start = end
    return count


@numba.njit(cache=True, nogil=True)
def _find_many(node_hi, node_lo, hi, lo, out):
    for i in range(hi.shape[0]):
        out[i] = _find(node_hi, node_lo, hi[i], lo[i])


def mark_dirty(
    dirty: np.ndarray, adjacency: dict[str, np.ndarray], near_hi: np.ndarray, near_lo: np.ndarray
) -> None:
    """Mark the CSR nodes of these near keys (rows about to be superseded) as holding superseded rows."""
    index = np.empty(len(near_hi), dtype=np.int64)
    _find_many(adjacency["node_hi"], adjacency["node_lo"], near_hi, near_lo, index)
    dirty[index[index >= 0]] = 1


def touching_rows(
    sources: Iterable[tuple[Any, int]], hi: np.ndarray, lo: np.ndarray
) -> list[tuple[Any, np.ndarray]]:
    """Every edge row of each source (its first ``n`` rows) leaving or reaching one of the keys ``hi, lo``:
    every version at every time, tombstones too, weight overlays not. In a segment a binary search per key
    in each direction's node table; in the memtable, whose CSR would be built anew after every write, one
    vectorised pass over its rows (:func:`edge_rows_touching`)."""
    out: list[tuple[Any, np.ndarray]] = []
    if hi.size == 0:
        return out
    for source, n in sources:
        if n == 0:
            continue
        if isinstance(source, Memtable):
            rows = edge_rows_touching(source, n, hi, lo)
            if rows.size:
                out.append((source, rows))
            continue
        found = []
        for near in ("src", "dst"):
            adjacency = source.adjacency[near]
            if adjacency["rows"].size == 0:
                continue
            index = np.empty(len(hi), dtype=np.int64)
            _find_many(adjacency["node_hi"], adjacency["node_lo"], hi, lo, index)
            offsets = adjacency["offsets"]
            found.extend(adjacency["rows"][offsets[i] : offsets[i + 1]] for i in index[index >= 0].tolist())
        if found:
            out.append((source, np.unique(np.concatenate(found))))
    return out


def edge_rows_touching(columns: Any, n: int, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """The edge rows (not weight overlays) among ``columns[:n]`` (a dict of columns or a source with them as
    attributes) whose source or target is one of the non-empty keys ``hi, lo``: one pass over the rows, a
    binary search of each end's high word among the keys (O(n log k), no sort of the rows), then the
    candidates checked on the whole key."""
    col = (
        (lambda name: columns[name][:n])
        if isinstance(columns, dict)
        else (lambda name: getattr(columns, name)[:n])
    )
    keys = np.sort(hi)
    src_hi, src_lo, dst_hi, dst_lo = col("src_hi"), col("src_lo"), col("dst_hi"), col("dst_lo")
    edge = (col("flags") & (FLAG_EDGE | FLAG_OVERLAY)) == FLAG_EDGE
    candidates = np.flatnonzero(edge & (_among(src_hi, keys) | _among(dst_hi, keys)))
    wanted = set(zip(hi.tolist(), lo.tolist(), strict=True))
    return np.array(
        [
            r
            for r, sh, sl, dh, dl in zip(
                candidates.tolist(), src_hi[candidates].tolist(), src_lo[candidates].tolist(),
                dst_hi[candidates].tolist(), dst_lo[candidates].tolist(), strict=True,
            )
            if (sh, sl) in wanted or (dh, dl) in wanted
        ],
        dtype=np.int64,
    )  # fmt: skip


def _among(values: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in the sorted non-empty ``keys``."""
    at = np.minimum(np.searchsorted(keys, values), keys.shape[0] - 1)
    return keys[at] == values


# ---------------------------------------------------------------------- visited set
# Open addressing over rows of (key_hi, key_lo, dense index + 1): a probe reads one 24-byte row. What a key
# carries (its key, hops, best weight, the edge that reached it) lives in dense arrays in visiting order,
# so the keys a call adds are the slice it appended: the next frontier, with no copy.
@numba.njit(cache=True, nogil=True)
def _slot_of(table, hi, lo):
    mask = table.shape[0] - 1
    h = (hi ^ (lo * np.uint64(0x9E3779B97F4A7C15))) * np.uint64(0xBF58476D1CE4E5B9)
    slot = np.int64((h >> np.uint64(17)) & np.uint64(mask))
    while table[slot, 2] != 0 and (table[slot, 0] != hi or table[slot, 1] != lo):
        slot = (slot + 1) & mask
    return slot


@numba.njit(cache=True, nogil=True)
def _offer(table, key_hi, key_lo, hops_out, weight_out, via_out, size, c_hi, c_lo, c_w, c_via, hops):
    """Insert the candidate keys not yet visited (at ``hops``); keep each key's best weight at that hop.
    Returns the new size: the keys added are ``[size, returned)`` of the dense arrays."""
    for i in range(c_hi.shape[0]):
        hi, lo = c_hi[i], c_lo[i]
        slot = _slot_of(table, hi, lo)
        index = table[slot, 2]
        if index == 0:
            table[slot, 0] = hi
            table[slot, 1] = lo
            table[slot, 2] = np.uint64(size + 1)
            key_hi[size] = hi
            key_lo[size] = lo
            hops_out[size] = hops
            weight_out[size] = c_w[i]
            via_out[size] = c_via[i]
            size += 1
        else:
            dense = np.int64(index) - 1
            if hops_out[dense] == hops and c_w[i] > weight_out[dense]:
                weight_out[dense] = c_w[i]
                via_out[dense] = c_via[i]
    return size


@numba.njit(cache=True, nogil=True)
def _rehash(table, key_hi, key_lo, size):
    for d in range(size):
        slot = _slot_of(table, key_hi[d], key_lo[d])
        table[slot, 0] = key_hi[d]
        table[slot, 1] = key_lo[d]
        table[slot, 2] = np.uint64(d + 1)


class VisitedSet:
    """Keys reached so far, with the hop count and best edge weight that reached each."""

    _DENSE = ("key_hi", "key_lo", "hops", "weight", "via")
    _DTYPES = (np.uint64, np.uint64, np.int64, np.float64, np.int64)

    def __init__(self, expected: int = 1024) -> None:
        self.size = 0
        expected = max(1024, int(expected))
        self.table = np.zeros((1 << (2 * expected).bit_length(), 3), dtype=np.uint64)
        for name, dtype in zip(self._DENSE, self._DTYPES, strict=True):
            setattr(self, name, np.empty(expected, dtype=dtype))

    def offer(
        self, hi: np.ndarray, lo: np.ndarray, weight: np.ndarray, hops: int, via: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Add the keys not seen before and return them (the next frontier). ``via`` tags each
        candidate with where it came from (kept for the best-weight one)."""
        needed = self.size + len(hi)
        if needed > len(self.hops):
            for name in self._DENSE:
                old = getattr(self, name)
                grown = np.empty(max(needed, 2 * len(old)), dtype=old.dtype)
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)
        if 2 * needed > len(self.table):
            self.table = np.zeros((1 << (2 * needed).bit_length(), 3), dtype=np.uint64)
            _rehash(self.table, self.key_hi, self.key_lo, self.size)
        if via is None:
            via = np.full(len(hi), -1, dtype=np.int64)
        start = self.size
        self.size = _offer(
            self.table, self.key_hi, self.key_lo, self.hops, self.weight, self.via, self.size,
            hi, lo, np.ascontiguousarray(weight, dtype=np.float64), via, hops,
        )  # fmt: skip
        return self.key_hi[start : self.size], self.key_lo[start : self.size]

    def items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(key_hi, key_lo, hops, weight, via)`` of every key, in the order they were reached."""
        n = self.size
        return self.key_hi[:n], self.key_lo[:n], self.hops[:n], self.weight[:n], self.via[:n]


# ---------------------------------------------------------------------- planning and walking
@dataclass(frozen=True, slots=True)
class _Step:
    """One source's part of a traversal: its adjacency and the filters in the form ``_expand`` takes."""

    source: Any
    n: int
    near: str
    adjacency: dict[str, np.ndarray]
    snap_seq: int
    check_seq: bool
    dirty: np.ndarray  # per node of the CSR: 1 when a row of its entries may be superseded
    known_us: int
    valid_us: int
    rel_ok: np.ndarray
    min_weight: float
    need_weight: bool
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
    need_weight: bool = True,
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
    need_weight = need_weight or min_weight > -math.inf
    steps = []
    for source, n in sources:
        if n == 0:
            continue
        if isinstance(source, Memtable):
            adjacency, check_seq = _memtable_adjacency(source, n, near), True
            dirty = np.ones(len(adjacency["node_hi"]), dtype=np.uint8)  # links change as rows arrive
        else:
            adjacency, check_seq = source.adjacency[near], False
            dirty = source.dirty_nodes(near)
        if adjacency["rows"].size == 0:
            continue
        kinds = source.kinds
        rel_ok = np.array([rels is None or k in rels for k in kinds] + [False], dtype=np.bool_)
        rel_scale = np.array([snap.scales.get(k, 1.0) for k in kinds] + [1.0])
        steps.append(
            _Step(source, n, near, adjacency, snap.seq, check_seq, dirty, known_us, valid_us, rel_ok,
                  min_weight, need_weight, snap.scales.get("*", 1.0), rel_scale)
        )  # fmt: skip
    return steps


def _memtable_adjacency(mem: Memtable, n: int, near: str) -> dict[str, np.ndarray]:
    """The memtable's CSR by ``near`` key, cached for its current row count."""
    cached = mem.adjacency.get((near, n))
    if cached is None:
        cached = build_adjacency(mem, n, near)
        mem.adjacency = {**{k: v for k, v in mem.adjacency.items() if k[0] != near}, (near, n): cached}
    return cached


def _far_id(source: Any, row: int, near: str) -> str:
    src, _, dst = source.id_at(row)[len(EDGE_PREFIX) :].split(EDGE_SEPARATOR)
    return dst if near == "src" else src


def breadth_first(
    steps: list[_Step],
    seeds: list[str],
    depth: int,
    keys: tuple[np.ndarray, np.ndarray] | None = None,
    name: bool = True,
    with_weights: bool = True,
) -> Any:
    """A :class:`Reached` mapping ``{id: (hops, weight)}`` (or ``{id: hops}`` without ``with_weights``) of
    everything reached from ``seeds`` within ``depth`` hops (seeds: 0 hops, weight inf).

    ``keys`` are the seeds' keys when the caller has them; ``name=False`` returns the raw
    ``(key_hi, key_lo, hops, weight, via)`` arrays instead of naming every key.
    """
    hi, lo = keys_of(seeds) if keys is None else keys
    seed_names = dict(zip(zip(hi.tolist(), lo.tolist(), strict=True), seeds, strict=True))
    if len(steps) == 1 and steps[0].adjacency.get("far_node") is not None:
        return _breadth_first_nodes(steps[0], seed_names, hi, lo, depth, name, with_weights)
    degree = sum(len(s.adjacency["rows"]) / max(1, len(s.adjacency["node_hi"])) for s in steps)
    nodes = sum(len(s.adjacency["node_hi"]) for s in steps) + len(seeds)
    visited = VisitedSet(int(min(nodes, len(seeds) * sum(degree**h for h in range(depth + 1)))))
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
    if not name:
        return visited.items()
    table = visited.table
    return Reached(
        *visited.items(), steps, seed_names, with_weights,
        lookup=lambda key_hi, key_lo: int(_visited_index(table, key_hi, key_lo)),
    )  # fmt: skip


def _breadth_first_nodes(
    step: _Step,
    seed_names: dict[tuple[int, int], str],
    hi: np.ndarray,
    lo: np.ndarray,
    depth: int,
    name: bool,
    with_weights: bool,
) -> Any:
    """:func:`breadth_first` inside one source whose CSR names far nodes by index (the fast path)."""
    adj, src = step.adjacency, step.source
    node_hi, node_lo = adj["node_hi"], adj["node_lo"]
    n_nodes = len(node_hi)
    index = np.empty(len(hi), dtype=np.int64)
    _find_many(node_hi, node_lo, hi, lo, index)
    hops = np.full(n_nodes, -1, dtype=np.int8 if depth < 127 else np.int32)
    place = np.full(n_nodes if step.need_weight else 0, -1, dtype=np.int64)
    # written only up to the count reached: untouched pages of these cost nothing
    order = np.empty(max(n_nodes, 1), dtype=np.int64)
    best_w = np.empty(max(n_nodes, 1), dtype=np.float64)
    via = np.empty(max(n_nodes, 1), dtype=np.int64)
    count = _bfs_nodes(
        index[index >= 0], depth, adj["offsets"], adj["far_node"], adj["rows"], adj["kind"], adj["flags"],
        adj["seq"], adj["recorded_at"], adj["valid_from"], adj["valid_to"], src.next_seq, src.superseded_at,
        src.weight, np.uint64(step.snap_seq), step.check_seq, step.dirty, np.int64(step.known_us),
        np.int64(step.valid_us), step.rel_ok, float(step.min_weight), step.need_weight, float(step.scale_all),
        step.rel_scale, hops, place, order, best_w, via,
    )  # fmt: skip
    order, best_w, via = order[:count], best_w[:count], via[:count]
    # seeds with no edge in this source: reached at 0 hops, first, in the order given
    isolated: dict[tuple[int, int], int] = {}
    for key_hi, key_lo, i in zip(hi.tolist(), lo.tolist(), index.tolist(), strict=True):
        if i < 0 and (key_hi, key_lo) not in isolated:
            isolated[(key_hi, key_lo)] = len(isolated)
    n_iso = len(isolated)
    iso_hi = np.fromiter((k[0] for k in isolated), dtype=np.uint64, count=n_iso)
    iso_lo = np.fromiter((k[1] for k in isolated), dtype=np.uint64, count=n_iso)
    r_hops = np.concatenate([np.zeros(n_iso, dtype=np.int64), hops[order].astype(np.int64)])
    r_via = np.concatenate([np.full(n_iso, -1, dtype=np.int64), via])
    r_w = np.concatenate([np.full(n_iso, math.inf), best_w])

    def keys() -> tuple[np.ndarray, np.ndarray]:  # random reads of the node table: made when asked
        return np.concatenate([iso_hi, node_hi[order]]), np.concatenate([iso_lo, node_lo[order]])

    if not name:
        return (*keys(), r_hops, r_w, r_via)
    position: list[np.ndarray] = []

    def lookup(key_hi: np.uint64, key_lo: np.uint64) -> int:
        i = int(_find(node_hi, node_lo, key_hi, key_lo))
        if i >= 0:
            if hops[i] < 0:
                return -1
            if not position:  # node index -> place in the result, made on the first lookup
                where = np.full(n_nodes, -1, dtype=np.int64)
                where[order] = np.arange(n_iso, n_iso + count)
                position.append(where)
            return int(position[0][i])
        return isolated.get((int(key_hi), int(key_lo)), -1)

    return Reached(keys, None, r_hops, r_w, r_via, [step], seed_names, with_weights, lookup=lookup)


@numba.njit(cache=True, nogil=True)
def _visited_index(table, hi, lo):
    """Dense index of key ``(hi, lo)`` in a visited table, or -1."""
    if table.shape[0] == 0:
        return -1
    return np.int64(table[_slot_of(table, hi, lo), 2]) - 1


class Reached(Mapping):
    """What TRAVERSE reached: a read-only mapping ``{id: hops}`` (or ``{id: (hops, weight)}``), in the
    order the nodes were reached (seeds first).

    It holds the walk's arrays and names nodes only when asked: ``len``, ``id in reached`` and
    ``reached[id]`` cost a hash probe each, whatever the size; iterating names every node once (then
    cached). ``hops`` and ``weights`` are the arrays in reach order; ``keys_u64()`` the 128-bit keys.
    """

    def __init__(
        self,
        hi: np.ndarray | Callable[[], tuple[np.ndarray, np.ndarray]],
        lo: np.ndarray | None,
        hops: np.ndarray,
        weight: np.ndarray,
        via: np.ndarray,
        steps: list[_Step],
        seed_names: dict[tuple[int, int], str],
        with_weights: bool,
        lookup: Callable[[np.uint64, np.uint64], int],
    ) -> None:
        # the keys, or a function making them on first use (the walk by node index needs none itself)
        self._keys: tuple[np.ndarray, np.ndarray] | Callable[[], tuple[np.ndarray, np.ndarray]] = (
            (hi, lo) if lo is not None else hi
        )
        self._hops, self._weight, self._via = hops, weight, via
        self._lookup = lookup  # key -> place in these arrays, or -1
        self._steps, self._seed_names, self._with_weights = steps, seed_names, with_weights
        self._names: list[str] | None = None

    @property
    def hops(self) -> np.ndarray:
        return self._hops

    @property
    def weights(self) -> np.ndarray:
        return self._weight

    def keys_u64(self) -> tuple[np.ndarray, np.ndarray]:
        if callable(self._keys):
            self._keys = self._keys()
        return self._keys

    def __len__(self) -> int:
        return len(self._hops)

    def _index(self, id: object) -> int:
        if not isinstance(id, str):
            return -1
        hi, lo = key_u64(id)
        return self._lookup(hi, lo)

    def __contains__(self, id: object) -> bool:
        return self._index(id) >= 0

    def __getitem__(self, id: str) -> Any:
        d = self._index(id)
        if d < 0:
            raise KeyError(id)
        if self._with_weights:
            return int(self._hops[d]), float(self._weight[d])
        return int(self._hops[d])

    def _all_names(self) -> list[str]:
        if self._names is None:
            hops, via, steps = self._hops, self._via, self._steps
            names = np.empty(len(hops), dtype=object)
            n_seeds = int(np.count_nonzero(hops == 0))  # the seeds come first, in visiting order
            names[:n_seeds] = [
                self._seed_names[key]
                for key in zip(*(k[:n_seeds].tolist() for k in self.keys_u64()), strict=True)
            ]
            reached = np.arange(n_seeds, len(hops))
            step_of = via[reached] % max(1, len(steps))
            for s_index, step in enumerate(steps):  # the rest are named from the edges that reached them
                mine = reached[step_of == s_index]
                if mine.size:
                    names[mine] = _far_ids(step.source, via[mine] // len(steps), step.near)
            self._names = names.tolist()
        return self._names

    def __iter__(self) -> Iterator[str]:
        return iter(self._all_names())

    def items(self) -> ItemsView:
        return _ReachedItems(self)

    def values(self) -> ValuesView:
        return _ReachedValues(self)

    def _values(self) -> list[Any]:
        if self._with_weights:
            return list(zip(self._hops.tolist(), self._weight.tolist(), strict=True))
        return self._hops.tolist()

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(self._all_names(), self._values(), strict=True))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        return self.to_dict() == dict(other.items())

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Reached({len(self)} nodes)"


class _ReachedItems(ItemsView):
    def __iter__(self) -> Iterator[tuple[str, Any]]:
        reached: Reached = self._mapping  # type: ignore[assignment]
        return zip(reached._all_names(), reached._values(), strict=True)


class _ReachedValues(ValuesView):
    def __iter__(self) -> Iterator[Any]:
        reached: Reached = self._mapping  # type: ignore[assignment]
        return iter(reached._values())


@numba.njit(cache=True, nogil=True)
def _far_ranges(id_bytes, id_offsets, rows, want_dst, starts, ends):
    """Byte range of the far endpoint inside each edge id ``\\x1e src \\x1f rel \\x1f dst``."""
    for i in range(rows.shape[0]):
        a, b = id_offsets[rows[i]], id_offsets[rows[i] + 1]
        if want_dst:
            j = b - 1
            while id_bytes[j] != 0x1F:
                j -= 1
            starts[i], ends[i] = j + 1, b
        else:
            j = a + 1
            while id_bytes[j] != 0x1F:
                j += 1
            starts[i], ends[i] = a + 1, j


def _far_ids(source: Any, rows: np.ndarray, near: str) -> list[str]:
    """The far endpoints' ids of edge ``rows``, decoded in one go (not one id string at a time)."""
    if isinstance(source, Memtable):
        return [_far_id(source, int(r), near) for r in rows.tolist()]
    starts = np.empty(len(rows), dtype=np.int64)
    ends = np.empty(len(rows), dtype=np.int64)
    _far_ranges(source.id_bytes, source.id_offsets, rows.astype(np.int64), near == "src", starts, ends)
    lengths = ends - starts
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    blob = np.empty(int(offsets[-1]), dtype=np.uint8)
    _copy_ranges(source.id_bytes, starts, lengths, blob, offsets)
    text = blob.tobytes().decode("utf-8")
    if text.isascii():  # character offsets are byte offsets
        cuts = offsets.tolist()
        return [text[cuts[i] : cuts[i + 1]] for i in range(len(rows))]
    raw = blob.tobytes()
    cuts = offsets.tolist()
    return [raw[cuts[i] : cuts[i + 1]].decode("utf-8") for i in range(len(rows))]


@numba.njit(cache=True, nogil=True)
def _copy_ranges(src, starts, lengths, dst, offsets):
    for i in range(starts.shape[0]):
        d = offsets[i]
        s = starts[i]
        for j in range(lengths[i]):
            dst[d + j] = src[s + j]


def neighbour_edges(steps: list[_Step], ids: list[str]) -> list[Edge]:
    """The visible edges at each of ``ids`` (leaving them when the plan walks out, reaching them when in)."""
    frontier = keys_of(ids)
    edges = []
    for step in steps:
        _, _, weights, rows = expand(step, frontier)
        source = step.source
        for row, w in zip(rows.tolist(), weights.tolist(), strict=True):
            src, rel, dst = source.id_at(row)[len(EDGE_PREFIX) :].split(EDGE_SEPARATOR)
            superseded = int(source.superseded_at[row]) if source.next_seq[row] <= step.snap_seq else OPEN
            edges.append(
                Edge(src, dst, rel, w, from_us(int(source.valid_from[row])), from_us(int(source.valid_to[row])),
                     from_us(int(source.recorded_at[row])), from_us(superseded))
            )  # fmt: skip
    return edges


def neighbour_pairs(steps: list[_Step], ids: list[str], direction: str) -> list[tuple[str, str]]:
    """``(near, far)`` ids of the edges :func:`neighbour_edges` would return, without building the records:
    the ids come out of the segments in bulk and no time is converted (what a search's expansion needs)."""
    frontier = keys_of(ids)
    near_side, far_side = ("src", "dst") if direction == "out" else ("dst", "src")
    pairs: list[tuple[str, str]] = []
    for step in steps:
        rows = expand(step, frontier)[3]
        if not rows.size:
            continue
        source = step.source
        if isinstance(source, Memtable):  # one split of each edge id gives both ends
            cut = len(EDGE_PREFIX)
            for row in rows.tolist():
                src, _, dst = source.id_at(row)[cut:].split(EDGE_SEPARATOR)
                pairs.append((src, dst) if near_side == "src" else (dst, src))
        else:  # _far_ids(rows, side) names the endpoint opposite ``side``, decoded in bulk
            near, far = _far_ids(source, rows, far_side), _far_ids(source, rows, near_side)
            pairs.extend(zip(near, far, strict=True))
    return pairs
