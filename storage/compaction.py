"""Building segments from row sources: the k-way merge, version chains, and the compaction policy hook.

A flush and a compaction are the same operation here: take rows from one or more *sources* (the
memtable, segments, rows a policy adds), put them in (key, seq) order, resolve version chains, and
write one segment. Segments are already sorted, so compaction merges them with a Numba k-way merge;
the memtable is sorted once with ``lexsort``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import numba
import numpy as np

from .item import Item, from_us
from .rows import FLAG_TOMBSTONE, NO_SEQ, NOT_ITEM, ROW_COLUMNS, TAG_FIELDS, TAG_OTHER

if TYPE_CHECKING:
    from collections.abc import Iterable

__all__ = [
    "CompactionPolicy",
    "MergedRows",
    "RowSource",
    "SegmentRows",
    "assemble",
    "kway_merge",
    "version_chains",
]

_VECTOR_CHUNK_ROWS = 16384


class RowSource(Protocol):
    """What a flush or compaction reads rows from: a segment, a frozen memtable, a batch.

    ``vectors`` may hold more vectors than rows (a segment keeps orphans so its HNSW labels stay
    valid); ``vector_row[r]`` is the position of row ``r``'s vector.
    """

    n: int
    vector_row: np.ndarray
    kinds: list[str]
    tag_values: list[list[str]]
    tags: np.ndarray
    vectors: np.ndarray
    id_offsets: np.ndarray
    id_bytes: np.ndarray
    payload_offsets: np.ndarray
    payload_bytes: np.ndarray
    # ... and one array per name in ROW_COLUMNS


# ---------------------------------------------------------------------- Numba cores
@numba.njit(cache=True, nogil=True)
def _kway_merge(key_hi, key_lo, seq, run_starts):
    """Merge ``k`` runs, each sorted by (key_hi, key_lo, seq), laid end to end in the inputs.

    ``run_starts`` is ``int64[k + 1]``. Returns the merged order as indices into the inputs. The heads
    are compared by a linear scan: k is the number of segments in one compaction (a handful), where a
    scan beats a heap.
    """
    k = run_starts.shape[0] - 1
    n = run_starts[k]
    heads = run_starts[:k].copy()
    out = np.empty(n, dtype=np.int64)
    for i in range(n):
        best = -1
        for r in range(k):
            h = heads[r]
            if h >= run_starts[r + 1]:
                continue
            if best < 0:
                best = r
                continue
            b = heads[best]
            if key_hi[h] < key_hi[b] or (
                key_hi[h] == key_hi[b]
                and (key_lo[h] < key_lo[b] or (key_lo[h] == key_lo[b] and seq[h] < seq[b]))
            ):
                best = r
        out[i] = heads[best]
        heads[best] += 1
    return out


@numba.njit(cache=True, nogil=True)
def _chains(key_hi, key_lo, seq, recorded_at, next_seq, superseded_at):
    """Link consecutive versions of each key (rows sorted by key, seq): the next one supersedes."""
    n = key_hi.shape[0]
    for i in range(n):
        if i + 1 < n and key_hi[i + 1] == key_hi[i] and key_lo[i + 1] == key_lo[i]:
            next_seq[i] = seq[i + 1]
            superseded_at[i] = recorded_at[i + 1]
        else:
            next_seq[i] = np.uint64(0xFFFFFFFFFFFFFFFF)
            superseded_at[i] = np.int64(0x7FFFFFFFFFFFFFFF)


@numba.njit(cache=True, nogil=True)
def _gather_ranges(src_bytes, src_offsets, src_rows, dst_bytes, dst_offsets, dst_rows):
    """Copy byte range ``src_rows[i]`` of a blob to range ``dst_rows[i]`` of the output blob."""
    for i in range(src_rows.shape[0]):
        s0 = src_offsets[src_rows[i]]
        s1 = src_offsets[src_rows[i] + 1]
        d0 = dst_offsets[dst_rows[i]]
        for j in range(s1 - s0):
            dst_bytes[d0 + j] = src_bytes[s0 + j]


@numba.njit(cache=True, nogil=True)
def _drop_expired(key_hi, key_lo, flags, superseded_at, cutoff, keep):
    """Bottommost compaction: drop versions superseded before ``cutoff``, then tombstones left alone.

    A tombstone only closes the version before it; once no older version of its key is kept, it is
    dropped too.
    """
    n = key_hi.shape[0]
    older_kept = False
    for i in range(n):
        if i == 0 or key_hi[i] != key_hi[i - 1] or key_lo[i] != key_lo[i - 1]:
            older_kept = False
        if not keep[i]:
            continue
        if (superseded_at[i] != np.int64(0x7FFFFFFFFFFFFFFF) and superseded_at[i] < cutoff) or (
            flags[i] & 1 and not older_kept
        ):
            keep[i] = False
        else:
            older_kept = older_kept or not (flags[i] & 1)


def kway_merge(sources: Sequence[RowSource]) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted sources: returns ``(src, row)``, the source index and row of each output row."""
    starts = np.zeros(len(sources) + 1, dtype=np.int64)
    starts[1:] = np.cumsum([s.n for s in sources])
    cat = {
        name: np.concatenate([getattr(s, name)[: s.n] for s in sources])
        for name in ("key_hi", "key_lo", "seq")
    }
    order = _kway_merge(cat["key_hi"], cat["key_lo"], cat["seq"], starts)
    src = (np.searchsorted(starts, order, side="right") - 1).astype(np.int32)
    return src, order - starts[src]


def version_chains(columns: dict[str, np.ndarray]) -> None:
    """Fill ``next_seq`` / ``superseded_at`` from the version order of rows sorted by (key, seq)."""
    _chains(
        columns["key_hi"], columns["key_lo"], columns["seq"], columns["recorded_at"],
        columns["next_seq"], columns["superseded_at"],
    )  # fmt: skip


# ---------------------------------------------------------------------- assembling output rows
def _merge_dictionary(tables: list[list[str]]) -> tuple[list[str], list[np.ndarray]]:
    """Union of per-source dictionaries, and per source an array remapping its codes (-2, -1 kept)."""
    merged: list[str] = []
    codes: dict[str, int] = {}
    remaps = []
    for table in tables:
        remap = np.empty(len(table) + 2, dtype=np.int32)
        for i, value in enumerate(table):
            code = codes.get(value)
            if code is None:
                code = codes[value] = len(merged)
                merged.append(value)
            remap[i] = code
        remap[-2], remap[-1] = TAG_OTHER, -1
        remaps.append(remap)
    return merged, remaps


@dataclass
class SegmentRows:
    """Output rows of a flush or compaction, ready for :func:`~t4dm.storage.segment.write_segment`."""

    columns: dict[str, np.ndarray]
    tags: np.ndarray
    kinds: list[str]
    tag_values: list[list[str]]
    ids: tuple[np.ndarray, np.ndarray]
    payloads: tuple[np.ndarray, np.ndarray]
    sources: Sequence[RowSource]
    src: np.ndarray
    row: np.ndarray

    base: int | None = None  # source whose whole vector block is kept at its positions (see layout)
    _layout: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def n(self) -> int:
        return int(self.src.shape[0])

    def layout_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Decide where each output vector goes; fill ``columns["vector_row"]``.

        Returns ``(vec_src, vec_pos)``: for each output vector position, its source and its position
        in that source's vector array. The ``base`` source (if set) comes first with its whole block
        at unchanged positions, orphans included, so that its HNSW index stays valid for the output;
        every other source adds the vectors its kept rows use, in its own order (sequential reads).
        """
        if self._layout is not None:
            return self._layout
        n = self.n
        pos = np.empty(n, dtype=np.int64)  # each output row's vector position in its source
        has_vector = (self.columns["flags"] & NOT_ITEM) == 0  # tombstones, edges, overlays keep no vector
        masks = [(self.src == s) & has_vector for s in range(len(self.sources))]
        for source, mask in zip(self.sources, masks, strict=True):
            pos[mask] = source.vector_row[self.row[mask]]
        order = list(range(len(self.sources)))
        if self.base is not None:
            order.remove(self.base)
            order.insert(0, self.base)
        vector_row = np.full(n, -1, dtype=np.int64)
        vec_src, vec_pos, offset = [], [], 0
        for s in order:
            mask = masks[s]
            if s == self.base:
                used = np.arange(self.sources[s].vectors.shape[0], dtype=np.int64)
                vector_row[mask] = offset + pos[mask]
            else:
                used = np.unique(pos[mask])
                vector_row[mask] = offset + np.searchsorted(used, pos[mask])
            vec_src.append(np.full(len(used), s, dtype=np.int32))
            vec_pos.append(used)
            offset += len(used)
        self.columns["vector_row"] = vector_row
        self._layout = (np.concatenate(vec_src), np.concatenate(vec_pos))
        return self._layout

    @property
    def n_vectors(self) -> int:
        return int(self.layout_vectors()[0].shape[0])

    def vector_chunks(self) -> Iterator[np.ndarray]:
        """Output vectors in layout order, gathered ``16384`` at a time (bounded memory)."""
        vec_src, vec_pos = self.layout_vectors()
        for start in range(0, len(vec_src), _VECTOR_CHUNK_ROWS):
            src, pos = (
                vec_src[start : start + _VECTOR_CHUNK_ROWS],
                vec_pos[start : start + _VECTOR_CHUNK_ROWS],
            )
            if len(self.sources) == 1:
                vectors = self.sources[0].vectors
                contiguous = len(pos) and pos[-1] - pos[0] == len(pos) - 1
                yield vectors[pos[0] : pos[-1] + 1] if contiguous else vectors[pos]
                continue
            chunk = np.empty((len(src), self.sources[0].vectors.shape[1]), dtype=np.float32)
            for s, source in enumerate(self.sources):
                mask = src == s
                if mask.any():
                    chunk[mask] = source.vectors[pos[mask]]
            yield chunk


def assemble(
    sources: Sequence[RowSource], src: np.ndarray, row: np.ndarray, base: int | None = None
) -> SegmentRows:
    """Gather the output rows ``(src[i], row[i])`` from ``sources``: row columns, tags, blobs.

    Kinds and tag values are re-coded into the output's merged dictionaries; ids and payloads are
    copied range by range in Numba. Vectors are laid out and gathered lazily
    (:meth:`SegmentRows.layout_vectors`, :meth:`SegmentRows.vector_chunks`), keeping ``base``'s block.
    """
    n = int(src.shape[0])
    kinds, kind_maps = _merge_dictionary([s.kinds for s in sources])
    tag_tables = [_merge_dictionary([s.tag_values[slot] for s in sources]) for slot in range(len(TAG_FIELDS))]
    columns = {name: np.empty(n, dtype=dtype) for name, dtype in ROW_COLUMNS.items()}
    tags = np.empty((n, len(TAG_FIELDS)), dtype=np.int32)
    id_len = np.empty(n, dtype=np.int64)
    payload_len = np.empty(n, dtype=np.int64)
    masks = [src == s for s in range(len(sources))] if len(sources) > 1 else [slice(None)]
    for s, (source, mask) in enumerate(zip(sources, masks, strict=False)):
        rows = row[mask]
        for name in ROW_COLUMNS:
            columns[name][mask] = getattr(source, name)[rows]
        columns["kind"][mask] = kind_maps[s][source.kind[rows]]
        for slot in range(len(TAG_FIELDS)):
            tags[mask, slot] = tag_tables[slot][1][s][source.tags[rows, slot]]
        id_len[mask] = source.id_offsets[rows + 1] - source.id_offsets[rows]
        payload_len[mask] = source.payload_offsets[rows + 1] - source.payload_offsets[rows]
    blobs = []
    for lengths, offsets_name, bytes_name in (
        (id_len, "id_offsets", "id_bytes"),
        (payload_len, "payload_offsets", "payload_bytes"),
    ):
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        blob = np.empty(int(offsets[-1]), dtype=np.uint8)
        for source, mask in zip(sources, masks, strict=False):
            dst_rows = np.arange(n, dtype=np.int64)[mask]
            _gather_ranges(
                np.asarray(getattr(source, bytes_name)), np.asarray(getattr(source, offsets_name)),
                np.ascontiguousarray(row[mask]), blob, offsets, dst_rows,
            )  # fmt: skip
        blobs.append((offsets, blob))
    return SegmentRows(
        columns=columns,
        tags=tags,
        kinds=kinds,
        tag_values=[table[0] for table in tag_tables],
        ids=blobs[0],
        payloads=blobs[1],
        sources=sources,
        src=src,
        row=row,
        base=base,
    )


def apply_keep(rows: SegmentRows, keep: np.ndarray) -> SegmentRows:
    """The rows where ``keep`` is True (dictionaries are kept whole)."""
    if keep.all():
        return rows
    index = np.flatnonzero(keep)
    return assemble_subset(rows, index)


def assemble_subset(rows: SegmentRows, index: np.ndarray) -> SegmentRows:
    """Rows ``index`` (in that order) of already assembled rows."""
    columns = {name: values[index] for name, values in rows.columns.items()}
    blobs = []
    for offsets, blob in (rows.ids, rows.payloads):
        lengths = offsets[index + 1] - offsets[index]
        new_offsets = np.zeros(len(index) + 1, dtype=np.int64)
        np.cumsum(lengths, out=new_offsets[1:])
        new_blob = np.empty(int(new_offsets[-1]), dtype=np.uint8)
        _gather_ranges(
            blob,
            offsets,
            index.astype(np.int64),
            new_blob,
            new_offsets,
            np.arange(len(index), dtype=np.int64),
        )
        blobs.append((new_offsets, new_blob))
    return SegmentRows(
        columns=columns,
        tags=rows.tags[index],
        kinds=rows.kinds,
        tag_values=rows.tag_values,
        ids=blobs[0],
        payloads=blobs[1],
        sources=rows.sources,
        src=rows.src[index],
        row=rows.row[index],
        base=rows.base,
    )


def drop_expired(rows: SegmentRows, cutoff_us: int | None) -> np.ndarray:
    """Keep mask of a bottommost compaction: versions superseded before ``cutoff_us`` go (None keeps
    all history), then tombstones with no older version left."""
    keep = np.ones(rows.n, dtype=np.bool_)
    c = rows.columns
    _drop_expired(
        c["key_hi"],
        c["key_lo"],
        c["flags"],
        c["superseded_at"],
        np.int64(cutoff_us if cutoff_us is not None else np.iinfo(np.int64).min),
        keep,
    )
    return keep


# ---------------------------------------------------------------------- the policy hook
class MergedRows:
    """What a compaction policy sees: the merged version rows of a full compaction, in (key, seq) order.

    Read: ``n``, ``ids`` (list of str), ``kinds`` (list of str), ``seq``, ``recorded_at``,
    ``superseded_at``, ``valid_from``, ``valid_to`` (int64 µs), ``is_current`` (the live version of its
    item, or of an edge), ``is_item`` (a row of an item, not of an edge), ``is_tombstone``,
    :meth:`vectors`, :meth:`fields`, :meth:`item`.

    Change: ``kappa`` (float64, edit in place; values are clipped to [0, 1] and NaN is refused; κ changed on
    live items is also written as κ overlays, which the change feed gives),
    ``keep`` (bool, set False to drop a version; drop every row of an id to erase it, which the change feed
    gives as an erasure), and
    :meth:`add` new items (they are written in the same compaction, atomically, as new versions).
    """

    def __init__(self, rows: SegmentRows, now_us: int) -> None:
        self._rows = rows
        c = rows.columns
        self.n = rows.n
        self.now_us = now_us
        self.seq = c["seq"]
        self.recorded_at = c["recorded_at"]
        self.superseded_at = c["superseded_at"]
        self.valid_from = c["valid_from"]
        self.valid_to = c["valid_to"]
        self.is_tombstone = (c["flags"] & FLAG_TOMBSTONE) != 0
        self.is_current = (c["next_seq"] == NO_SEQ) & ~self.is_tombstone
        self.is_item = (c["flags"] & NOT_ITEM) == 0  # not a tombstone, an edge or a weight overlay
        self.kappa = c["kappa"].copy()
        self.keep = np.ones(self.n, dtype=np.bool_)
        self.added: list[Item] = []
        self.provenance: list[list[str]] = []  # per added item: the ids it was derived from
        self._kind_names = np.asarray([*rows.kinds, ""], dtype=object)
        self._ids: list[str] | None = None

    @property
    def ids(self) -> list[str]:
        if self._ids is None:
            offsets, blob = self._rows.ids
            raw = blob.tobytes()
            self._ids = [raw[offsets[i] : offsets[i + 1]].decode("utf-8") for i in range(self.n)]
        return self._ids

    @property
    def kinds(self) -> list[str]:
        return self._kind_names[self._rows.columns["kind"]].tolist()

    def vectors(self, rows: np.ndarray | Sequence[int] | None = None) -> np.ndarray:
        """Vectors of ``rows`` (all rows when None), ``float32 [len(rows), dim]``."""
        index = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        src, row = self._rows.src[index], self._rows.row[index]
        out = np.empty((len(index), self._rows.sources[0].vectors.shape[1]), dtype=np.float32)
        for s, source in enumerate(self._rows.sources):
            mask = src == s
            if mask.any():
                positions = source.vector_row[row[mask]]
                out[mask] = np.where((positions >= 0)[:, None], source.vectors[positions], 0.0)
        return out

    def fields(self, i: int) -> dict[str, Any]:
        offsets, blob = self._rows.payloads
        return msgpack.unpackb(blob[offsets[i] : offsets[i + 1]].tobytes(), raw=False, strict_map_key=False)

    def item(self, i: int) -> Item:
        """Version ``i`` as an :class:`Item` (κ as currently edited)."""
        c = self._rows.columns
        return Item(
            vector=self.vectors([i])[0],
            id=self.ids[i],
            kappa=float(self.kappa[i]),
            kind=self._kind_names[c["kind"][i]],
            fields=self.fields(i),
            valid_from=from_us(int(self.valid_from[i])),
            valid_to=from_us(int(self.valid_to[i])),
            recorded_at=from_us(int(self.recorded_at[i])),
            superseded_at=from_us(int(self.superseded_at[i])),
        )

    def add(self, items: Item | Iterable[Item], derived_from: Iterable[str] | None = None) -> None:
        """Queue new items (validated like :meth:`T4DX.insert`) to be written by this compaction,
        atomically with it; ``derived_from`` ids become their provenance (``derived_from`` edges)."""
        items = [items] if isinstance(items, Item) else list(items)
        sources = [] if derived_from is None else list(derived_from)
        self.added.extend(items)
        self.provenance.extend([sources] * len(items))


CompactionPolicy = Callable[[MergedRows], None]
"""A callable that sees a full compaction's merged rows and may edit ``kappa``, ``keep`` and :meth:`add`."""
