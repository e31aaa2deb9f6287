"""The memtable: recent version rows in growable columns, readable while the writer appends.

Readers never lock. The writer fills a row's columns first and only then makes it reachable (the
``latest`` dict, the published row count), and a grown column set is swapped in whole after the copy.
Readers always read ``memtable.cols`` (the newest column set, which holds every row written so far)
and keep to the rows and sequence numbers of their snapshot.
"""

from __future__ import annotations

import bisect
from typing import Any

import numpy as np

from .item import OPEN
from .rows import NO_SEQ, ROW_COLUMNS, TAG_FIELDS, TAG_OTHER, VersionBatch

__all__ = ["Memtable"]

_INITIAL_ROWS = 1024


class _Columns:
    """One generation of the memtable's arrays (capacity ``cap`` rows)."""

    __slots__ = (
        *ROW_COLUMNS,
        "cap",
        "inv_norm",
        "payload_start",
        "prev_row",
        "tags",
        "vector_row",
        "vectors",
    )

    def __init__(self, cap: int, dim: int) -> None:
        self.cap = cap
        for name, dtype in ROW_COLUMNS.items():
            setattr(self, name, np.empty(cap, dtype=dtype))
        self.tags = np.empty((cap, len(TAG_FIELDS)), dtype=np.int32)
        self.vectors = np.empty((cap, dim), dtype=np.float32)
        self.prev_row = np.empty(cap, dtype=np.int64)  # previous version of the key in this memtable
        self.vector_row = np.arange(cap, dtype=np.int64)  # rows own their vectors, in order
        self.inv_norm = np.empty(cap, dtype=np.float32)  # 1 / ‖vector‖, for cosine scores
        self.payload_start = np.empty(cap + 1, dtype=np.int64)

    def grown(self, cap: int, n: int, dim: int) -> _Columns:
        bigger = _Columns(cap, dim)
        for name in (*ROW_COLUMNS, "tags", "vectors", "prev_row", "inv_norm"):
            getattr(bigger, name)[:n] = getattr(self, name)[:n]
        bigger.payload_start[: n + 1] = self.payload_start[: n + 1]
        return bigger


class Memtable:
    """Version rows not yet flushed to a segment, in write order (``seq`` ascending)."""

    def __init__(self, dim: int, capacity: int = _INITIAL_ROWS) -> None:
        self.dim = dim
        self.cols = _Columns(max(1, capacity), dim)
        self.cols.payload_start[0] = 0
        self.n = 0
        self.ids: list[str] = []
        self.latest: dict[str, int] = {}  # id -> row of its newest version here
        self.kinds: list[str] = []
        self._kind_codes: dict[str, int] = {}
        self.tag_values: list[list[str]] = [[] for _ in TAG_FIELDS]
        self._tag_codes: list[dict[str, int]] = [{} for _ in TAG_FIELDS]
        self._chunks: list[bytes] = []
        self._chunk_starts: list[int] = []
        self.payload_size = 0
        self.vector_bytes = 0
        self.adjacency: dict[tuple[str, int], np.ndarray] = {}  # edge order by endpoint, per row count
        self.min_seq = 0
        self.max_seq = 0

    @property
    def nbytes(self) -> int:
        """Approximate bytes held: vectors, row columns and payloads."""
        return self.n * 136 + self.vector_bytes + self.payload_size

    # ------------------------------------------------------------------ writing (writer lock held)
    def _codes(self, values: list[str], table: list[str], codes: dict[str, int]) -> np.ndarray:
        out = np.empty(len(values) + 2, dtype=np.int32)  # [-2, -1] map to themselves
        for i, value in enumerate(values):
            code = codes.get(value)
            if code is None:
                code = codes[value] = len(table)
                table.append(value)
            out[i] = code
        out[-2], out[-1] = TAG_OTHER, -1
        return out

    def append(self, batch: VersionBatch) -> list[int]:
        """Append a batch's rows; supersede older versions held here.

        Returns the batch positions whose id had no version in this memtable (the caller looks those
        up in the segments, unless the batch is ``fresh``).
        """
        n, first = batch.n, self.n
        cols = self.cols
        if first + n > cols.cap:
            cap = max(cols.cap * 2, 1 << int(first + n - 1).bit_length())
            cols = self.cols = cols.grown(cap, first, self.dim)
        rows = slice(first, first + n)
        for name in (
            "key_hi",
            "key_lo",
            "valid_from",
            "valid_to",
            "kappa",
            "flags",
            "src_hi",
            "src_lo",
            "dst_hi",
            "dst_lo",
            "weight",
        ):
            getattr(cols, name)[rows] = getattr(batch, name)
        seqs = np.arange(batch.seq_start, batch.seq_start + n, dtype=np.uint64)
        cols.seq[rows] = seqs
        cols.recorded_at[rows] = batch.recorded_at
        cols.superseded_at[rows] = OPEN
        cols.next_seq[rows] = NO_SEQ
        kind_map = self._codes(batch.kinds, self.kinds, self._kind_codes)
        cols.kind[rows] = kind_map[batch.kind]
        for slot in range(len(TAG_FIELDS)):
            tag_map = self._codes(batch.tag_values[slot], self.tag_values[slot], self._tag_codes[slot])
            cols.tags[rows, slot] = tag_map[batch.tags[:, slot]]
        if batch.vectors.shape[1]:  # edge and overlay batches carry no vectors ([n, 0])
            cols.vectors[rows] = batch.vectors
            norms = np.linalg.norm(batch.vectors, axis=1)
            cols.inv_norm[rows] = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
            self.vector_bytes += batch.vectors.nbytes
        else:
            cols.inv_norm[rows] = 0.0
        base = self.payload_size
        cols.payload_start[first + 1 : first + n + 1] = base + batch.payload_offsets[1:]
        self._chunks.append(batch.payload)
        self._chunk_starts.append(base)
        self.payload_size = base + len(batch.payload)
        # Link versions and make the rows reachable, in seq order.
        prev_row, latest, recorded = cols.prev_row, self.latest, batch.recorded_at
        unseen: list[int] = []
        self.ids.extend(batch.ids)
        if batch.fresh:  # new ids: no earlier versions, nothing to link
            prev_row[rows] = -1
            latest.update(zip(batch.ids, range(first, first + n), strict=True))
        for i, id in enumerate(() if batch.fresh else batch.ids):
            row = first + i
            prev = latest.get(id, -1)
            prev_row[row] = prev
            if prev >= 0:
                cols.superseded_at[prev] = recorded
                cols.next_seq[prev] = seqs[i]
            else:
                unseen.append(i)
            latest[id] = row
        if first == 0:
            self.min_seq = batch.seq_start
        self.max_seq = batch.seq_start + n - 1
        self.n = first + n
        return unseen

    # ------------------------------------------------------------------ reading
    # The row columns read as attributes of the memtable (they live in the newest ``cols``).
    for _name in (*ROW_COLUMNS, "tags", "vectors", "vector_row", "inv_norm"):
        locals()[_name] = property(lambda self, _n=_name: getattr(self.cols, _n))
    del _name

    def id_at(self, row: int) -> str:
        return self.ids[row]

    def fields_bytes(self, row: int) -> bytes:
        cols = self.cols
        start, end = int(cols.payload_start[row]), int(cols.payload_start[row + 1])
        # every row's payload is at least one byte (msgpack of a dict), so chunks are never empty
        i = bisect.bisect_right(self._chunk_starts, start) - 1
        base = self._chunk_starts[i]
        return self._chunks[i][start - base : end - base]

    def ids_at(self, rows: np.ndarray) -> list[str]:
        ids = self.ids
        return [ids[r] for r in rows.tolist()]

    def fields_bytes_at(self, rows: np.ndarray) -> list[bytes]:
        return [self.fields_bytes(r) for r in rows.tolist()]

    def kind_code(self, kind: str) -> int | None:
        return self._kind_codes.get(kind)

    def tag_code(self, slot: int, value: Any) -> int | None:
        if not isinstance(value, str):
            return TAG_OTHER
        return self._tag_codes[slot].get(value)

    def payload_blob(self) -> np.ndarray:
        """All payload bytes concatenated (``uint8``), indexed by ``cols.payload_start``."""
        return np.frombuffer(b"".join(self._chunks), dtype=np.uint8)
