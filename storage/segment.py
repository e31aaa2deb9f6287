"""Immutable segments: one file of columnar, memory-mapped arrays, sorted by (key, seq).

Layout of ``segments/<id:08d>.seg``::

    "T4DXSEG\\0" | format u32 | zero padding to 64 bytes
    column arrays, each 64-byte aligned (see :mod:`t4dm.storage.rows` for the row columns; also
        ``tags``, ``vectors``, ``id_offsets``/``id_bytes``, ``payload_offsets``/``payload_bytes``,
        ``bloom`` and the κ index ``kappa_order``/``kappa_sorted``)
    footer: msgpack {format, dim, n, min_seq, max_seq, kinds, tag_fields, tag_values, bloom_k,
            columns: {name: [offset, nbytes, dtype, shape, crc32c]}}
    footer length u64 | CRC32C of the footer u32 | "T4DXSEG\\0"

Every column carries a CRC32C, checked when the segment is opened (hardware CRC32C runs at about
9 GB/s here, so a 1 GB store costs about 0.1 s). ``superseded_at`` / ``next_seq`` are copied into
memory at open, because newer versions written later change them.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import threading
from collections.abc import Iterable
from typing import Any

import msgpack
import numba
import numpy as np

from t4dm.errors import CorruptSegment

from .bloom import BloomFilter, _bloom_contains_one
from .fsutil import checksum, fsync_dir, io_errors
from .graph import ADJACENCY_COLUMNS, ADJACENCY_EXTRA, build_adjacency, mark_dirty
from .rows import NO_SEQ, ROW_COLUMNS, TAG_FIELDS, TAG_OTHER

__all__ = ["FORMAT", "Segment", "SegmentWriter", "segment_path", "write_segment"]

# 2 (2026-12-07): rows may be κ overlays (FLAG_OVERLAY without FLAG_EDGE) or erasing tombstones (FLAG_ERASE),
# which a library that reads only format 1 would misread; format-1 segments read as before
FORMAT = 2
_MAGIC = b"T4DXSEG\x00"
_ALIGN = 64
_TAIL = struct.Struct("<QI8s")
# changed in memory after the segment is written (links, and the weight and κ overlays)
_MUTABLE = ("superseded_at", "next_seq", "weight", "kappa")
_SYNC_EVERY = 32 << 20


def segment_path(directory: str, segment_id: int) -> str:
    return os.path.join(directory, f"{segment_id:08d}.seg")


# ---------------------------------------------------------------------- lookups (Numba)
@numba.njit(cache=True, nogil=True)
def _lower_bound(key_hi, key_lo, hi, lo):
    a, b = 0, key_hi.shape[0]
    while a < b:
        m = (a + b) >> 1
        if key_hi[m] < hi or (key_hi[m] == hi and key_lo[m] < lo):
            a = m + 1
        else:
            b = m
    return a


@numba.njit(cache=True, nogil=True)
def _key_range(key_hi, key_lo, hi, lo):
    """Rows ``[start, end)`` holding the versions of key (hi, lo), oldest first."""
    start = _lower_bound(key_hi, key_lo, hi, lo)
    end = start
    n = key_hi.shape[0]
    while end < n and key_hi[end] == hi and key_lo[end] == lo:
        end += 1
    return start, end


@numba.njit(cache=True, nogil=True)
def _lookup(words, n_blocks, k, key_hi, key_lo, hi, lo):
    """Bloom probe, then binary search: rows ``[start, end)`` of key (hi, lo), empty if absent."""
    if not _bloom_contains_one(words, n_blocks, k, hi, lo):
        return 0, 0
    return _key_range(key_hi, key_lo, hi, lo)


@numba.njit(cache=True, nogil=True)
def _latest_rows(key_hi, key_lo, maybe, q_hi, q_lo, out):
    """``out[i]`` = row of the newest version of query key ``i`` (where ``maybe[i]``), else -1."""
    for i in range(q_hi.shape[0]):
        out[i] = -1
        if maybe[i]:
            start, end = _key_range(key_hi, key_lo, q_hi[i], q_lo[i])
            if end > start:
                out[i] = end - 1


# ---------------------------------------------------------------------- writing
class SegmentWriter:
    """Writes one segment file: aligned, checksummed columns, then the footer; durable on :meth:`publish`.

    The vectors may be written by a background thread (:meth:`start_vectors`) while the caller is
    still encoding the other columns: a bulk insert overlaps its disk writes with its Python work.
    All writes are ``pwrite`` at explicit offsets, so the two threads never share a file position.
    """

    def __init__(self, tmp_path: str, dim: int, n: int, n_vectors: int | None = None) -> None:
        self.tmp_path = tmp_path
        self.dim, self.n = dim, n
        self.n_vectors = n if n_vectors is None else n_vectors
        self.columns: dict[str, list[Any]] = {}
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None
        # Write-back runs while we write: a helper thread fdatasyncs every _SYNC_EVERY bytes, so the
        # final fsync finds little left (measured: compaction of 175 MB, 0.29 s of final fsync before).
        self._unsynced = 0
        self._inv_norms: list[np.ndarray] = []
        self._sync_wanted = threading.Event()
        self._sync_stop = False
        self._syncer = threading.Thread(target=self._sync_loop, name="t4dx-segment-sync", daemon=True)
        with io_errors(tmp_path):
            self._fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.pwrite(self._fd, (_MAGIC + struct.pack("<I", FORMAT)).ljust(_ALIGN, b"\0"), 0)
        self._pos = _ALIGN
        self._syncer.start()

    def _sync_loop(self) -> None:
        while True:
            self._sync_wanted.wait()
            self._sync_wanted.clear()
            if self._sync_stop:
                return
            with contextlib.suppress(OSError):  # the final fsync reports errors
                os.fdatasync(self._fd)

    def _stop_syncer(self) -> None:
        self._sync_stop = True
        self._sync_wanted.set()
        self._syncer.join()

    def _reserve(self, nbytes: int) -> int:
        offset = self._pos
        self._pos = -(-(offset + nbytes) // _ALIGN) * _ALIGN
        return offset

    def _write_chunks(
        self, name: str, dtype: np.dtype, shape: tuple[int, ...], offset: int, chunks: Iterable[np.ndarray]
    ) -> None:
        crc, nbytes = 0, 0
        for chunk in chunks:
            chunk = np.ascontiguousarray(chunk, dtype=dtype)
            if name == "vectors":  # 1/‖v‖ for cosine scores, computed while the vectors stream past
                norms = np.linalg.norm(chunk, axis=1)
                self._inv_norms.append(np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0))
            if chunk.size == 0:
                continue
            view = memoryview(chunk).cast("B")
            crc = checksum(view, crc)
            self._unsynced += len(view)
            while view:
                written = os.pwrite(self._fd, view, offset + nbytes)
                nbytes += written
                view = view[written:]
            if self._unsynced >= _SYNC_EVERY:
                self._unsynced = 0
                self._sync_wanted.set()
        expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        if nbytes != expected:
            raise AssertionError(f"column {name}: wrote {nbytes} bytes, shape {shape} needs {expected}")
        self.columns[name] = [offset, nbytes, np.dtype(dtype).str, list(shape), crc]

    def add(self, name: str, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        self._write_chunks(name, array.dtype, array.shape, self._reserve(array.nbytes), [array])

    def start_vectors(self, chunks: Iterable[np.ndarray]) -> None:
        """Write the ``float32 [n, dim]`` vectors, in vector order, from a background thread."""
        offset = self._reserve(self.n_vectors * self.dim * 4)

        def run() -> None:
            try:
                self._write_chunks(
                    "vectors", np.dtype(np.float32), (self.n_vectors, self.dim), offset, chunks
                )
            except BaseException as exc:  # re-raised by finish()
                self._thread_error = exc

        self._thread = threading.Thread(target=run, name="t4dx-segment-vectors", daemon=True)
        self._thread.start()

    def finish(
        self,
        *,
        columns: dict[str, np.ndarray],
        tags: np.ndarray,
        ids: tuple[np.ndarray, np.ndarray],
        payloads: tuple[np.ndarray, np.ndarray],
        kinds: list[str],
        tag_values: list[list[str]],
        bloom_fp_rate: float,
        vectors: Iterable[np.ndarray] | None = None,
    ) -> None:
        """Write every other column and the footer, and fsync. Rows must be sorted by (key, seq) and
        ``columns`` include ``vector_row``; ``vectors`` (vector order) is needed unless
        :meth:`start_vectors` was called."""
        n = self.n
        if int(columns["key_hi"].shape[0]) != n:
            raise AssertionError(f"{len(columns['key_hi'])} rows, the writer was made for {n}")
        with io_errors(self.tmp_path):
            if self._thread is None:
                if vectors is None:
                    raise ValueError("vectors are needed: start_vectors() was not called")
                m = self.n_vectors
                self._write_chunks(
                    "vectors", np.dtype(np.float32), (m, self.dim), self._reserve(m * self.dim * 4), vectors
                )
            for name, dtype in ROW_COLUMNS.items():
                self.add(name, np.asarray(columns[name], dtype=dtype))
            self.add("vector_row", np.asarray(columns["vector_row"], dtype=np.int64))
            self.add("tags", np.asarray(tags, dtype=np.int32).reshape(n, len(TAG_FIELDS)))
            self.add("id_offsets", ids[0])
            self.add("id_bytes", ids[1])
            self.add("payload_offsets", payloads[0])
            self.add("payload_bytes", payloads[1])
            first = np.ones(n, dtype=bool)
            if n > 1:
                first[1:] = (columns["key_hi"][1:] != columns["key_hi"][:-1]) | (
                    columns["key_lo"][1:] != columns["key_lo"][:-1]
                )
            bloom = BloomFilter.build(columns["key_hi"][first], columns["key_lo"][first], bloom_fp_rate)
            self.add("bloom", bloom.words)
            # Secondary indexes: each a permutation of the rows and the key it sorts them by, so that a
            # range or value finds its rows by binary search without touching the others. A tag index
            # orders the rows of one value by valid-from time and keeps those times beside it: a
            # composite (tag, valid_from) index, so "user u in the last 30 days" is two binary searches.
            for name, key in (("kappa", columns["kappa"]), ("valid_from", columns["valid_from"])):
                order = np.argsort(key, kind="stable").astype(np.int64)
                self.add(f"{name}_order", order)
                self.add(f"{name}_sorted", key[order])
            tag_matrix = np.asarray(tags, dtype=np.int32).reshape(n, -1)
            for slot in range(len(TAG_FIELDS)):
                key = tag_matrix[:, slot]
                order = np.lexsort((columns["valid_from"], key)).astype(np.int64)
                self.add(f"tag{slot}_order", order)
                self.add(f"tag{slot}_sorted", key[order])
                self.add(f"tag{slot}_valid_from", columns["valid_from"][order])
            # The edge CSR per direction (graph.build_adjacency): by source key and by destination key.
            for direction, near in (("out", "src"), ("in", "dst")):
                for name, values in build_adjacency(columns, n, near).items():
                    self.add(f"{direction}_{name}", values)
            if self._thread is not None:
                self._thread.join()
                self._thread = None
                if self._thread_error is not None:
                    raise self._thread_error
            inv_norm = np.concatenate(self._inv_norms) if self._inv_norms else np.empty(0, np.float32)
            self.add("inv_norm", inv_norm.astype(np.float32))
            seq = columns["seq"]
            meta = {
                "format": FORMAT,
                "dim": self.dim,
                "n": n,
                "min_seq": int(seq.min()) if n else 0,
                "max_seq": int(seq.max()) if n else 0,
                "kinds": kinds,
                "tag_fields": list(TAG_FIELDS),
                "tag_values": tag_values,
                "bloom_k": bloom.k,
                "columns": self.columns,
            }
            footer = msgpack.packb(meta, use_bin_type=True)
            os.pwrite(self._fd, footer + _TAIL.pack(len(footer), checksum(footer), _MAGIC), self._pos)
            self._stop_syncer()
            os.fsync(self._fd)

    def publish(self, path: str) -> None:
        """Move the finished file to ``path`` and fsync the folder."""
        with io_errors(path):
            os.close(self._fd)
            self._fd = -1
            os.replace(self.tmp_path, path)
        fsync_dir(os.path.dirname(path))

    def abort(self) -> None:
        """Give up: wait for the vector thread, close and remove the temporary file."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if not self._sync_stop:
            self._stop_syncer()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.tmp_path)


def write_segment(
    path: str,
    *,
    dim: int,
    columns: dict[str, np.ndarray],
    tags: np.ndarray,
    vectors: Iterable[np.ndarray] | None,
    ids: tuple[np.ndarray, np.ndarray],
    payloads: tuple[np.ndarray, np.ndarray],
    kinds: list[str],
    tag_values: list[list[str]],
    bloom_fp_rate: float,
    writer: SegmentWriter | None = None,
    n_vectors: int | None = None,
) -> None:
    """Write a segment to ``path`` durably (temporary file, fsync, rename, fsync the folder).

    Rows must already be sorted by (key_hi, key_lo, seq). ``vectors`` is an iterable of ``float32``
    chunks ``[m, dim]`` in row order (so compaction can stream), or None when ``writer`` already
    writes them; ``ids`` and ``payloads`` are ``(offsets int64[n + 1], bytes uint8[...])``.
    """
    n = int(columns["key_hi"].shape[0])
    if writer is None:
        writer = SegmentWriter(path + ".tmp", dim, n, n_vectors)
    try:
        writer.finish(
            columns=columns, tags=tags, ids=ids, payloads=payloads, kinds=kinds,
            tag_values=tag_values, bloom_fp_rate=bloom_fp_rate, vectors=vectors,
        )  # fmt: skip
        writer.publish(path)
    except BaseException:
        writer.abort()
        raise


# ---------------------------------------------------------------------- reading
class Segment:
    """A segment opened for reading: memory-mapped columns plus the in-memory supersession columns."""

    def __init__(self, path: str, segment_id: int, dim: int, verify: bool = True) -> None:
        self.path = path
        self.id = segment_id
        with io_errors(path), open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _ALIGN + _TAIL.size:
                raise CorruptSegment(path, f"file too short ({size} bytes)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = self._map
        if buf[: len(_MAGIC)] != _MAGIC:
            raise CorruptSegment(path, "bad magic", 0)
        footer_len, footer_crc, magic = _TAIL.unpack_from(buf, size - _TAIL.size)
        footer_at = size - _TAIL.size - footer_len
        if magic != _MAGIC or footer_at < _ALIGN:
            raise CorruptSegment(path, "bad tail", size - _TAIL.size)
        footer = buf[footer_at : size - _TAIL.size]
        if checksum(footer) != footer_crc:
            raise CorruptSegment(path, "footer checksum mismatch", footer_at)
        try:
            meta = msgpack.unpackb(footer, raw=False)
        except Exception as exc:  # msgpack raises several types on garbage
            raise CorruptSegment(path, f"undecodable footer: {exc}", footer_at) from exc
        if meta.get("format", 0) > FORMAT:
            raise CorruptSegment(path, f"format {meta['format']} is newer than this library reads ({FORMAT})")
        if meta["dim"] != dim:
            raise CorruptSegment(path, f"dimension {meta['dim']}, the store has {dim}")
        self.meta = meta
        self.n: int = meta["n"]
        self.dim = dim
        self.min_seq: int = meta["min_seq"]
        self.max_seq: int = meta["max_seq"]
        self.kinds: list[str] = meta["kinds"]
        self.tag_values: list[list[str]] = meta["tag_values"]
        self._kind_codes = {k: i for i, k in enumerate(self.kinds)}
        self._tag_codes = [{v: i for i, v in enumerate(values)} for values in self.tag_values]
        arrays: dict[str, np.ndarray] = {}
        for name, (offset, nbytes, dtype, shape, crc) in meta["columns"].items():
            if offset + nbytes > footer_at:
                raise CorruptSegment(path, f"column {name} runs past the data", offset)
            view = memoryview(buf)[offset : offset + nbytes]
            if verify and checksum(view) != crc:
                raise CorruptSegment(path, f"column {name} checksum mismatch", offset)
            arrays[name] = np.frombuffer(
                buf, dtype=np.dtype(dtype), count=nbytes // np.dtype(dtype).itemsize, offset=offset
            ).reshape(shape)
        for name in ROW_COLUMNS:
            value = arrays[name]
            setattr(self, name, value.copy() if name in _MUTABLE else value)
        self.tags: np.ndarray = arrays["tags"]
        self.vectors: np.ndarray = arrays["vectors"]  # [n_vectors, dim]; row r's is vector_row[r]
        self.vector_row: np.ndarray = arrays["vector_row"]
        self.row_of_vector = np.full(self.vectors.shape[0], -1, dtype=np.int64)  # -1: an orphan
        with_vector = np.flatnonzero(self.vector_row >= 0)  # tombstones have none
        self.row_of_vector[self.vector_row[with_vector]] = with_vector
        self.id_offsets: np.ndarray = arrays["id_offsets"]
        self.id_bytes: np.ndarray = arrays["id_bytes"]
        self.payload_offsets: np.ndarray = arrays["payload_offsets"]
        self.payload_bytes: np.ndarray = arrays["payload_bytes"]
        self.kappa_order: np.ndarray = arrays["kappa_order"]
        self.kappa_sorted: np.ndarray = arrays["kappa_sorted"]
        self.kappa_moved = np.empty(0, dtype=np.int64)  # rows whose κ an overlay changed (sorted, unique)
        self.valid_from_order: np.ndarray = arrays["valid_from_order"]
        self.valid_from_sorted: np.ndarray = arrays["valid_from_sorted"]
        self.tag_order = [arrays[f"tag{slot}_order"] for slot in range(len(TAG_FIELDS))]
        self.tag_sorted = [arrays[f"tag{slot}_sorted"] for slot in range(len(TAG_FIELDS))]
        # segments written before the composite (tag, valid_from) index have none
        self.tag_valid_from = [arrays.get(f"tag{slot}_valid_from") for slot in range(len(TAG_FIELDS))]
        self.inv_norm: np.ndarray = arrays["inv_norm"]
        # the edge CSR per direction (graph.ADJACENCY_COLUMNS), by source and by destination key
        self.adjacency = {
            near: {
                **{name: arrays[f"{direction}_{name}"] for name in ADJACENCY_COLUMNS},
                **{name: arrays.get(f"{direction}_{name}") for name in ADJACENCY_EXTRA},
            }
            for direction, near in (("out", "src"), ("in", "dst"))
        }
        self.index = None  # the HNSW index (vector_index), loaded or built by the store
        self.live_cache: tuple | None = (
            None  # (mutations, rows alive, labels alive, row mask): query.live_rows
        )
        self.mutations = 0  # bumped by the writer whenever next_seq / superseded_at change
        self.max_next_seq = int(self.next_seq[self.next_seq != NO_SEQ].max(initial=0))
        # per CSR node and direction: 1 when one of its edge rows is superseded (TRAVERSE reads the
        # version links of those nodes' entries only); made on first use, kept current by set_links
        self._dirty: dict[str, np.ndarray] = {}
        self.bloom = BloomFilter(arrays["bloom"], meta["bloom_k"])
        self.nbytes = size
        self._id_base = meta["columns"]["id_bytes"][0]
        self._payload_base = meta["columns"]["payload_bytes"][0]

    def set_links(
        self, next_seq: np.ndarray, superseded_at: np.ndarray, rows: np.ndarray | None = None
    ) -> None:
        """Set the in-memory version links of ``rows`` (all rows when None); only the writer calls this."""
        where = slice(None) if rows is None else rows
        marked = np.arange(self.n) if rows is None else np.asarray(rows)
        for near, dirty in self._dirty.items():  # before the links change: a reader never sees a
            keys = (self.src_hi, self.src_lo) if near == "src" else (self.dst_hi, self.dst_lo)  # clean node
            mark_dirty(dirty, self.adjacency[near], keys[0][marked], keys[1][marked])  # with a closed row
        self.next_seq[where] = next_seq
        self.superseded_at[where] = superseded_at
        finite = np.asarray(next_seq)[np.asarray(next_seq) != NO_SEQ]
        self.max_next_seq = max(self.max_next_seq, int(finite.max(initial=0)))
        self.mutations += 1

    def dirty_nodes(self, near: str) -> np.ndarray:
        """Per node of the ``near`` CSR: 1 when one of its entries' rows has a successor (its version
        links must be read), 0 when none has."""
        dirty = self._dirty.get(near)
        if dirty is None:
            adjacency = self.adjacency[near]
            dirty = np.zeros(len(adjacency["node_hi"]), dtype=np.uint8)
            closed = np.flatnonzero(self.next_seq != NO_SEQ)
            if closed.size:
                keys = (self.src_hi, self.src_lo) if near == "src" else (self.dst_hi, self.dst_lo)
                mark_dirty(dirty, adjacency, keys[0][closed], keys[1][closed])
            self._dirty = {**self._dirty, near: dirty}
        return dirty

    # -------------------------------------------------------------- rows
    def id_at(self, row: int) -> str:
        base, offsets = self._id_base, self.id_offsets
        return self._map[base + offsets.item(row) : base + offsets.item(row + 1)].decode("utf-8")

    def fields_bytes(self, row: int) -> bytes:
        base, offsets = self._payload_base, self.payload_offsets
        return self._map[base + offsets.item(row) : base + offsets.item(row + 1)]

    def ids_at(self, rows: np.ndarray) -> list[str]:
        base, starts, ends = self._id_base, self.id_offsets[rows].tolist(), self.id_offsets[rows + 1].tolist()
        mapped = self._map
        return [mapped[base + a : base + b].decode("utf-8") for a, b in zip(starts, ends, strict=True)]

    def fields_bytes_at(self, rows: np.ndarray) -> list[bytes]:
        base, mapped = self._payload_base, self._map
        starts, ends = self.payload_offsets[rows].tolist(), self.payload_offsets[rows + 1].tolist()
        return [mapped[base + a : base + b] for a, b in zip(starts, ends, strict=True)]

    def kind_code(self, kind: str) -> int | None:
        return self._kind_codes.get(kind)

    def tag_code(self, slot: int, value: Any) -> int | None:
        if not isinstance(value, str):
            return TAG_OTHER
        return self._tag_codes[slot].get(value)

    # -------------------------------------------------------------- indexes
    def latest_row(self, hi: np.uint64, lo: np.uint64) -> int:
        """Row of the newest version of key (hi, lo) in this segment, or -1 (one Numba call)."""
        bloom = self.bloom
        start, end = _lookup(bloom.words, bloom.n_blocks, bloom.k, self.key_hi, self.key_lo, hi, lo)
        return end - 1 if end > start else -1

    def key_rows(self, hi: np.uint64, lo: np.uint64) -> tuple[int, int]:
        """Rows ``[start, end)`` of every version of key (hi, lo) in this segment."""
        bloom = self.bloom
        return _lookup(bloom.words, bloom.n_blocks, bloom.k, self.key_hi, self.key_lo, hi, lo)

    def latest_rows(self, key_hi: np.ndarray, key_lo: np.ndarray) -> np.ndarray:
        """:meth:`latest_row` for many keys: ``int64[len(key_hi)]``."""
        maybe = self.bloom.contains(key_hi, key_lo)
        out = np.empty(len(key_hi), dtype=np.int64)
        _latest_rows(self.key_hi, self.key_lo, maybe, key_hi, key_lo, out)
        return out

    def kappa_rows(self, lo: float, hi: float) -> np.ndarray:
        """Rows with ``lo <= kappa <= hi`` (unordered), from the κ index (no scan) and the rows whose κ an
        overlay has changed since the segment was written (checked on their present value)."""
        a = np.searchsorted(self.kappa_sorted, float(lo), side="left")
        b = np.searchsorted(self.kappa_sorted, float(hi), side="right")
        rows = self.kappa_order[a:b]
        moved = self.kappa_moved
        if not moved.size:
            return rows
        now = self.kappa[moved]
        return np.concatenate([rows[~np.isin(rows, moved)], moved[(now >= lo) & (now <= hi)]])

    def set_kappa(self, rows: np.ndarray, values: np.ndarray) -> None:
        """Set κ of ``rows`` in memory (a κ overlay); only the writer calls this. The rows join
        ``kappa_moved`` before their values change, so :meth:`kappa_rows` never misses one."""
        rows = np.asarray(rows, dtype=np.int64)
        values = np.asarray(values, dtype=np.float64)
        changed = self.kappa[rows] != values
        if not changed.any():
            return
        self.kappa_moved = np.union1d(self.kappa_moved, rows[changed])
        self.kappa[rows[changed]] = values[changed]

    def valid_from_rows(self, lo: int, hi: int) -> np.ndarray:
        """Rows with ``lo <= valid_from < hi`` (µs; unordered), from the valid-time index."""
        a = np.searchsorted(self.valid_from_sorted, lo, side="left")
        b = np.searchsorted(self.valid_from_sorted, hi, side="left")
        return self.valid_from_order[a:b]

    def tag_rows(self, slot: int, code: int) -> np.ndarray:
        """Rows whose tag ``slot`` has dictionary code ``code`` (unordered), from the tag index."""
        tags = self.tag_sorted[slot]
        code = tags.dtype.type(code)  # a Python int would make NumPy cast the whole column first
        a = np.searchsorted(tags, code, side="left")
        b = np.searchsorted(tags, code, side="right")
        return self.tag_order[slot][a:b]

    def tag_valid_from_rows(self, slot: int, code: int, lo: int, hi: int) -> np.ndarray | None:
        """Rows whose tag ``slot`` has code ``code`` and ``lo <= valid_from < hi`` (µs), from the composite
        index: two binary searches, no row touched. None for a segment without that index."""
        times = self.tag_valid_from[slot]
        if times is None:
            return None
        tags = self.tag_sorted[slot]
        code = tags.dtype.type(code)  # a Python int would make NumPy cast the whole column first
        a = int(np.searchsorted(tags, code, side="left"))
        b = int(np.searchsorted(tags, code, side="right"))
        run = times[a:b]
        return self.tag_order[slot][a + int(np.searchsorted(run, lo)) : a + int(np.searchsorted(run, hi))]

    @property
    def index_path(self) -> str:
        return self.path[: -len(".seg")] + ".hnsw"
