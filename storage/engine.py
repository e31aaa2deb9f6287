"""T4DX: the embedded, bitemporal LSM storage engine for memories.

Write path: validate → (writer lock) assign ``seq`` and transaction time → WAL append → memtable →
publish a read snapshot → (lock released) wait for the fsync the durability mode asks for. A full
memtable is flushed to an immutable segment; too many segments trigger a compaction.

Read path: a reader takes the current :class:`_Snapshot` (one attribute read, no lock) and sees exactly
the writes with ``seq <= snapshot.seq``: rows newer than that are skipped, and a version whose
``next_seq`` is newer than that still counts as current. Flushes and compactions publish new
snapshots; readers holding an old one keep reading the old memtable and segment files (unlinked
files stay readable while mapped).
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import fcntl
import functools
import heapq
import math
import numbers
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, TypeVar

import faiss
import msgpack
import numpy as np

from t4dm.errors import (
    DimensionMismatch,
    InvalidInput,
    InvalidTime,
    InvalidVector,
    NotAStore,
    PayloadNotSerializable,
    ReadOnlyStore,
    StorageIOError,
    StoreClosed,
    StoreLocked,
    UnknownId,
)

from .compaction import (
    CompactionPolicy,
    MergedRows,
    SegmentRows,
    apply_keep,
    assemble,
    drop_expired,
    kway_merge,
    version_chains,
)
from .fsutil import fsync_dir, io_errors
from .graph import (
    Reached,
    breadth_first,
    edge_rows_touching,
    graph_plan,
    neighbour_edges,
    neighbour_pairs,
    touching_rows,
)
from .item import OPEN, UTC, Change, Edge, Hit, Item, KappaUpdate, WeightScale, from_us, to_us
from .keys import EDGE_PREFIX, EDGE_SEPARATOR, check_id, edge_id, key_u64, keys_of, new_ids
from .manifest import NAME as MANIFEST_NAME
from .manifest import Manifest, SegmentEntry
from .memtable import Memtable
from .query import Filter, check_payloads, live_rows, match_rows, parse_filter, same, search_source, unpack
from .rows import (
    FLAG_EDGE,
    FLAG_ERASE,
    FLAG_OVERLAY,
    FLAG_SCALE,
    FLAG_TOMBSTONE,
    MAX_KINDS,
    NO_SEQ,
    NOT_ITEM,
    ROW_COLUMNS,
    TAG_ABSENT,
    TAG_FIELDS,
    TAG_OTHER,
    VersionBatch,
)
from .segment import Segment, SegmentWriter, segment_path, write_segment
from .vector_index import HNSWParams, build_hnsw, extend_hnsw, load_hnsw, save_hnsw
from .wal import DURABILITY_MODES, WAL, read_records, record_end, wal_files, wal_path

__all__ = ["T4DX", "CompactionStats"]

_FILL = np.iinfo(np.int64).min  # "valid_from: use the transaction time"
_SCAN_CHUNK = 256  # rows materialised at a time by scan()
_SEGMENTS = "segments"
_WAL = "wal"
_LOCK = "LOCK"
_pack = msgpack.Packer(use_bin_type=True, autoreset=True).pack


class _Snapshot(NamedTuple):
    """What a reader sees: writes up to ``seq``, the memtable's first ``mem_n`` rows, the segments."""

    seq: int
    mem: Memtable
    mem_n: int
    segments: tuple[Segment, ...]  # oldest first
    scales: dict[str, float]  # BATCH_SCALE_WEIGHTS factors by relation ("*": every relation)
    # those scales since the last fold, (seq, recorded_at µs, relation, factor) each, and the factors older
    # than that log (of a store written before there was one)
    scale_log: tuple[tuple[int, int, str, float], ...]
    scale_base: dict[str, float]
    folded_through: int  # µs: the change feed lacks changes recorded up to it (0: none)


@dataclass(frozen=True, slots=True)
class CompactionStats:
    """What one compaction did. Sizes in bytes, time in seconds."""

    segments_in: int
    rows_in: int
    rows_out: int
    rows_added: int
    bytes_in: int
    bytes_out: int
    seconds: float
    full: bool

    @property
    def mb_per_s(self) -> float:
        """Input megabytes (10^6 bytes) merged per second."""
        return self.bytes_in / 1e6 / self.seconds if self.seconds > 0 else float("inf")


def _id_blob(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """UTF-8 ids concatenated, with ``int64[n + 1]`` offsets."""
    encoded = [i.encode("utf-8") for i in ids]
    offsets = np.zeros(len(ids) + 1, dtype=np.int64)
    np.cumsum(np.fromiter(map(len, encoded), dtype=np.int64, count=len(ids)), out=offsets[1:])
    return offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8)


class _FrozenMemtable:
    """The memtable's first ``n`` rows, presented as a row source for a flush."""

    def __init__(self, mem: Memtable, n: int) -> None:
        cols = mem.cols
        self.n = n
        for name in ROW_COLUMNS:
            setattr(self, name, getattr(cols, name)[:n])
        self.tags = cols.tags[:n]
        self.vectors = cols.vectors[:n]
        self.vector_row = cols.vector_row[:n]
        self.kinds = mem.kinds
        self.tag_values = mem.tag_values
        self.id_offsets, self.id_bytes = _id_blob(mem.ids[:n])
        self.payload_offsets = cols.payload_start[: n + 1]
        self.payload_bytes = mem.payload_blob()


class _ColumnsView:
    """A compaction's rows as a source of their columns by attribute (what :meth:`T4DX._edge_tombstones`
    reads of a memtable or a segment)."""

    def __init__(self, rows: SegmentRows) -> None:
        self._columns, self.kinds = rows.columns, rows.kinds

    def __getattr__(self, name: str) -> np.ndarray:
        return self._columns[name]


class _BatchSource:
    """A validated batch (a bulk ingest, or rows a compaction policy adds) presented as a row source."""

    def __init__(self, batch: VersionBatch) -> None:
        n = batch.n
        self.n = n
        for name in (
            "key_hi",
            "key_lo",
            "valid_from",
            "valid_to",
            "kappa",
            "kind",
            "flags",
            "src_hi",
            "src_lo",
            "dst_hi",
            "dst_lo",
            "weight",
        ):
            setattr(self, name, getattr(batch, name))
        self.seq = np.arange(batch.seq_start, batch.seq_start + n, dtype=np.uint64)
        self.recorded_at = np.full(n, batch.recorded_at, dtype=np.int64)
        self.superseded_at = np.full(n, OPEN, dtype=np.int64)
        self.next_seq = np.full(n, NO_SEQ, dtype=np.uint64)
        self.tags, self.vectors = batch.tags, batch.vectors
        self.vector_row = np.arange(n, dtype=np.int64)
        self.kinds, self.tag_values = batch.kinds, batch.tag_values
        self.id_offsets, self.id_bytes = _id_blob(batch.ids)
        self.payload_offsets = batch.payload_offsets
        self.payload_bytes = np.frombuffer(batch.payload, dtype=np.uint8)


_Method = TypeVar("_Method", bound=Callable[..., Any])


def _writes(method: _Method) -> _Method:
    """Mark a public method that writes: on a store opened ``read_only=True`` it raises
    :class:`~t4dm.errors.ReadOnlyStore` before doing anything."""
    name = method.__name__

    @functools.wraps(method)
    def guarded(self: T4DX, *args: Any, **kwargs: Any) -> Any:
        if self._read_only:
            self._check_open()
            raise ReadOnlyStore(self.path, name)
        return method(self, *args, **kwargs)

    return guarded  # type: ignore[return-value]


class T4DX:
    """An embedded, durable, bitemporal store of memories (vectors + κ + kind + fields + times).

    Open with :meth:`T4DX.open`; use as a context manager or call :meth:`close`. One process writes
    (it holds ``LOCK``); any number of threads read while it does, and other processes can read beside it
    with ``open(path, read_only=True)`` (catching up with :meth:`refresh`).
    """

    # ================================================================== opening and closing
    def __init__(self, *_: Any, **__: Any) -> None:
        raise TypeError("use T4DX.open(path, dim=...)")

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        dim: int | None = None,
        *,
        durability: str = "sync",
        sync_interval: float = 0.005,
        memtable_bytes: int = 64 << 20,
        max_segments: int = 8,
        history_retention: timedelta | float | None = None,
        compaction_policy: CompactionPolicy | None = None,
        bloom_fp_rate: float = 0.01,
        verify_checksums: bool = True,
        clock: Callable[[], datetime] | None = None,
        hnsw: HNSWParams | Mapping[str, int] | None = None,
        index_build: str = "background",
        read_only: bool = False,
    ) -> T4DX:
        """Open the store at ``path``, creating it (``dim`` required) when the folder is new or empty.

        Args:
            dim: vector dimension; checked against an existing store (``None`` takes the store's).
            durability: ``"sync"`` (each write returns after an fsync; concurrent writers share one),
                ``"batch"`` (written to the OS at once, fsynced every ``sync_interval`` seconds by a
                background thread) or ``"none"`` (fsync at flush and close only).
            memtable_bytes: flush the memtable to a segment beyond this size.
            max_segments: merge segments (smallest adjacent run first) beyond this count.
            history_retention: how long superseded versions stay queryable by transaction time
                (``known_at`` / ``as_of``) once superseded; ``None`` keeps all history. Applied by full
                compactions, which also drop tombstones once nothing older of theirs is kept.
            compaction_policy: called with the :class:`~t4dm.storage.compaction.MergedRows` of every
                full compaction; may change κ, drop rows, add rows (consolidation plugs in here).
            bloom_fp_rate: false-positive rate of each segment's Bloom filter over ids.
            verify_checksums: check every segment's CRC32C at open.
            clock: returns the current time (timezone-aware); for tests and replays.
            hnsw: HNSW settings (:class:`~t4dm.storage.vector_index.HNSWParams` or a dict of its
                fields: ``m``, ``ef_construction``, ``ef_search``, ``min_rows``).
            index_build: ``"background"`` (a thread builds each new segment's HNSW index; until it is
                ready the segment is searched exactly; :meth:`wait_indexed` waits) or ``"sync"`` (flush,
                ingest and compaction return with the index built).
            read_only: read the store beside the process that writes it (which holds its lock), or
                without taking the lock: the store as it was when opened, until :meth:`refresh`. Nothing
                under ``path`` is written, created or removed, not even to repair a torn log tail (read up
                to it); every write raises :class:`~t4dm.errors.ReadOnlyStore`. The store must exist.
                Segments whose HNSW index the writer has not built yet are searched exactly.
        """
        options = dict(locals())
        options.pop("cls")
        options["path"] = os.fspath(path)
        self = object.__new__(cls)
        self._init(**options)
        return self

    # what a read-only store keeps across a refresh: its open options, the segments it has checksummed,
    # and the lock that orders refreshes and close
    _REFRESH_KEEP = ("_options", "_verified", "_refresh_lock")

    def _init(
        self,
        *,
        path: str,
        dim: int | None,
        durability: str,
        sync_interval: float,
        memtable_bytes: int,
        max_segments: int,
        history_retention: timedelta | float | None,
        compaction_policy: CompactionPolicy | None,
        bloom_fp_rate: float,
        verify_checksums: bool,
        clock: Callable[[], datetime] | None,
        hnsw: HNSWParams | Mapping[str, int] | None,
        index_build: str,
        read_only: bool,
    ) -> None:
        self._closed = True
        self._options = {name: value for name, value in locals().items() if name != "self"}
        if durability not in DURABILITY_MODES:
            raise InvalidInput("durability", durability, f"expected one of {DURABILITY_MODES}")
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, numbers.Integral) or dim < 1):
            raise InvalidInput("dim", dim, "expected a positive integer")
        if not isinstance(sync_interval, numbers.Real) or not sync_interval > 0:
            raise InvalidInput("sync_interval", sync_interval, "expected seconds > 0")
        if not isinstance(memtable_bytes, numbers.Integral) or memtable_bytes < 1:
            raise InvalidInput("memtable_bytes", memtable_bytes, "expected a positive integer")
        if not isinstance(max_segments, numbers.Integral) or max_segments < 1:
            raise InvalidInput("max_segments", max_segments, "expected a positive integer")
        if not isinstance(bloom_fp_rate, numbers.Real) or not 0 < bloom_fp_rate < 1:
            raise InvalidInput("bloom_fp_rate", bloom_fp_rate, "expected 0 < rate < 1")
        if isinstance(history_retention, timedelta):
            history_retention = history_retention.total_seconds()
        if history_retention is not None and (
            not isinstance(history_retention, numbers.Real) or history_retention < 0
        ):
            raise InvalidInput(
                "history_retention", history_retention, "expected seconds >= 0, a timedelta or None"
            )
        if compaction_policy is not None and not callable(compaction_policy):
            raise InvalidInput("compaction_policy", compaction_policy, "expected a callable")
        if index_build not in ("background", "sync"):
            raise InvalidInput("index_build", index_build, "expected 'background' or 'sync'")
        if not isinstance(read_only, bool):
            raise InvalidInput("read_only", read_only, "expected True or False")
        self._read_only = read_only
        if isinstance(hnsw, Mapping):
            unknown = set(hnsw) - {"m", "ef_construction", "ef_search", "min_rows"}
            if unknown:
                raise InvalidInput("hnsw", sorted(unknown), "unknown HNSW settings")
            hnsw = HNSWParams(**hnsw)
        elif hnsw is None:
            hnsw = HNSWParams()
        elif not isinstance(hnsw, HNSWParams):
            raise InvalidInput("hnsw", hnsw, "expected HNSWParams or a dict of its fields")
        self._hnsw = hnsw.check()
        self._index_build = index_build
        self.path = path
        self.durability = durability
        self._memtable_bytes = int(memtable_bytes)
        self._memtable_rows = 0  # set once the dimension is known
        self._max_segments = int(max_segments)
        self._retention_us = None if history_retention is None else int(history_retention * 1e6)
        self._policy = compaction_policy
        self._bloom_fp_rate = float(bloom_fp_rate)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._write_lock = threading.RLock()
        self._janitor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t4dx-janitor")
        self._indexer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="t4dx-index")
        self._index_jobs: list[Future[None]] = []
        self._stopping = False

        if read_only:
            self._lock_fd = -1
            self._verified: set[int] = getattr(self, "_verified", set())  # segment ids checksummed once
            self._refresh_lock = getattr(self, "_refresh_lock", threading.Lock())
            try:
                self._open_read_only(dim, verify_checksums)
            except BaseException:
                self._indexer.shutdown(wait=True)
                self._janitor.shutdown(wait=True)
                raise
            self._closed = False
            return
        created = self._prepare_directory(path, dim)
        self._lock_fd = self._acquire_lock(path)
        try:
            if created or not Manifest.exists(path):
                if dim is None:
                    raise InvalidInput("dim", dim, f"{path!r} holds no store yet: give dim to create one")
                for sub in (_SEGMENTS, _WAL):
                    with io_errors(os.path.join(path, sub)):
                        os.makedirs(os.path.join(path, sub), exist_ok=True)
                fsync_dir(path)
                Manifest(dim=int(dim)).publish(path)
            self._use_manifest(Manifest.load(path), dim)
            self._recover(verify_checksums, sync_interval)
        except BaseException:
            os.close(self._lock_fd)
            self._stopping = True
            self._indexer.shutdown(wait=True)
            self._janitor.shutdown(wait=True)
            raise
        self._closed = False

    def _use_manifest(self, manifest: Manifest, dim: int | None) -> Manifest:
        """Take the store's dimension from ``manifest`` (``dim``, when given, must be it) and size the
        memtable for it; returns the manifest."""
        if dim is not None and dim != manifest.dim:
            raise DimensionMismatch("dim", dim, manifest.dim)
        self._manifest, self.dim = manifest, manifest.dim
        # Reserve the memtable's rows up front (untouched pages cost no memory), so that filling it never
        # copies; a batch larger than the memtable still grows it.
        self._memtable_rows = min(1 << 22, self._memtable_bytes // (self.dim * 4 + 96) + 1)
        return manifest

    def _replay_logs(self, numbers: list[int], start: int) -> None:
        """Apply the records of log files ``numbers`` (the first from byte ``start``) that are newer than what
        this store holds; a reader notes how far it read (``_wal_read``)."""
        wal_dir = os.path.join(self.path, _WAL)
        for i, number in enumerate(numbers):
            path = wal_path(wal_dir, number)
            last = i == len(numbers) - 1
            begin = start if i == 0 else 0
            self._wal_read = (number, begin)
            for offset, body in read_records(
                wal_dir, number, self.dim, last=last, repair=not self._read_only, start=begin
            ):
                batch = VersionBatch.decode(body, path, offset)
                if batch.seq_start + batch.n - 1 > self._seq:  # else already in a segment, or applied
                    self._apply(batch)
                self._wal_read = (number, record_end(offset, body))

    def _catch_up(self) -> bool:
        """A reader's refresh when the writer has only appended to its logs since (the manifest is the one
        this store loaded): the new records applied as the writer applied them, the snapshots published
        in order. False (the caller loads the store again) when the manifest changed or the log file read
        last is gone."""
        if Manifest.load(self.path) != self._manifest:
            return False
        number, offset = self._wal_read
        numbers = [n for n in wal_files(os.path.join(self.path, _WAL)) if n >= number]
        if not numbers or numbers[0] != number:
            return False
        try:
            self._replay_logs(numbers, offset)
        except StorageIOError as exc:
            if isinstance(exc.__cause__, FileNotFoundError):
                return False  # a flush removed a log meanwhile: what was applied is a prefix, then reloaded
            raise
        return True

    def _open_read_only(self, dim: int | None, verify: bool) -> None:
        """Load the store as the manifest and the logs hold it, writing nothing. The writer may publish a
        new manifest meanwhile and then remove the segments and logs the old one named: the load is
        tried again until the manifest read after it is the one read before."""
        path = self.path
        if not os.path.isdir(path) or not Manifest.exists(path):
            raise NotAStore(path, "holds no T4DX store to open read-only")
        for attempt in range(50):
            self._loaded_stamp = self._stamp()  # before: a change while loading is caught up at refresh
            manifest = self._use_manifest(Manifest.load(path), dim)
            try:
                self._recover(verify, 0.0)
            except StorageIOError as exc:
                if not isinstance(exc.__cause__, FileNotFoundError) or attempt == 49:
                    raise
                time.sleep(0.001 * attempt)  # a file of that manifest is gone: a newer one is out
                continue
            if Manifest.load(path) == manifest:
                return
        raise StorageIOError(path, OSError("the store's manifest kept changing while it was read"))

    @staticmethod
    def _prepare_directory(path: str, dim: int | None) -> bool:
        """Make sure ``path`` is a store folder or can become one; return True if it was made."""
        if os.path.exists(path) and not os.path.isdir(path):
            raise NotAStore(path, "is a file, not a folder")
        if not os.path.exists(path):
            if dim is None:
                raise InvalidInput("dim", dim, f"{path!r} does not exist: give dim to create a store")
            with io_errors(path):
                os.makedirs(path)
            return True
        with io_errors(path):
            entries = set(os.listdir(path))
        ours = {_LOCK, _SEGMENTS, _WAL, "MANIFEST", "MANIFEST.tmp"}
        if "MANIFEST" not in entries and entries - ours:
            raise NotAStore(
                path, f"folder holds other files ({sorted(entries - ours)[:3]}) and no T4DX manifest"
            )
        return False

    @staticmethod
    def _acquire_lock(path: str) -> int:
        lock_path = os.path.join(path, _LOCK)
        with io_errors(lock_path):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreLocked(path) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd

    def _recover(self, verify: bool, sync_interval: float) -> None:
        manifest = self._manifest
        seg_dir, wal_dir = os.path.join(self.path, _SEGMENTS), os.path.join(self.path, _WAL)
        live = {entry.id for entry in manifest.segments}
        writer = not self._read_only
        if writer:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.path, "MANIFEST.tmp"))
            # Remove what a crash left behind: temporary files, unpublished segments, replayed logs.
            with io_errors(seg_dir):
                for name in os.listdir(seg_dir):
                    stem = name.split(".", 1)[0]
                    if name.endswith(".tmp") or not stem.isdigit() or int(stem) not in live:
                        os.unlink(os.path.join(seg_dir, name))
            for number in wal_files(wal_dir):
                if number < manifest.wal_start:
                    with io_errors(wal_dir):
                        os.unlink(os.path.join(wal_dir, f"{number:08d}.wal"))
        verified = set() if writer else self._verified  # a reader checks a segment once (they never change)
        segments = tuple(
            Segment(
                segment_path(seg_dir, entry.id),
                entry.id,
                manifest.dim,
                verify=verify and entry.id not in verified,
            )
            for entry in manifest.segments
        )
        verified.update(live if verify else ())
        _link_across_segments(segments)
        self._segments = segments
        for segment in segments:
            segment.index = load_hnsw(segment.index_path, segment.vectors.shape[0], manifest.dim)
            if segment.index is None and writer:
                self._schedule_index(segment)
        self._seq = manifest.last_seq
        self._last_recorded = manifest.last_recorded
        self._scales = dict(manifest.edge_scales)
        self._scale_log = tuple(
            (int(a), int(b), str(c), float(d)) for a, b, c, d in manifest.edge_scale_log or ()
        )
        # the factors older than the log (a manifest written before there was one): the start of each product
        self._scale_base = dict(
            manifest.edge_scales if manifest.edge_scale_log is None else manifest.edge_scale_base
        )
        self._folded_through = manifest.folded_through
        self._mem = Memtable(manifest.dim, self._memtable_rows)
        self._publish()
        self._apply_segment_overlays()
        numbers_ = [number for number in wal_files(wal_dir) if number >= manifest.wal_start]
        self._wal_read = (manifest.wal_start, 0)  # a reader: the log file and byte it has read up to
        self._replay_logs(numbers_, 0)
        if writer:
            tail = numbers_[-1] if numbers_ else manifest.wal_start
            self._wal = WAL(wal_dir, tail, manifest.dim, self.durability, sync_interval)

    @_writes
    def backup(self, path: str | os.PathLike[str]) -> str:
        """Copy the store as it is now into the new folder ``path`` (a store that opens on its own); returns
        the path.

        The memtable is flushed first; then, holding the write lock, every segment of the manifest and its
        HNSW index (when built) is hard-linked into the copy (copied across file systems; segments are never
        written after they are published, so a link is a copy), and the manifest written. The copy is made
        in ``path + ".backup-tmp"`` and renamed into place: a crash leaves no half-made store at ``path``.
        Writes wait while the files are linked (milliseconds); readers do not.

        Raises :class:`~t4dm.errors.InvalidInput` when ``path`` exists.
        """
        dest = os.path.abspath(os.fspath(path))
        if os.path.lexists(dest):
            raise InvalidInput("path", dest, "exists: a backup goes to a new folder")
        self._check_open()
        with self._write_lock:
            self._check_open()
            self._flush_locked(auto_compact=False)
            tmp = dest + ".backup-tmp"
            with io_errors(tmp):
                if os.path.lexists(tmp):
                    shutil.rmtree(tmp)
                os.makedirs(os.path.join(tmp, _SEGMENTS))
                os.makedirs(os.path.join(tmp, _WAL))
                for segment in self._segments:
                    for source in (segment.path, segment.index_path):
                        if source == segment.path or os.path.exists(source):
                            target = os.path.join(tmp, _SEGMENTS, os.path.basename(source))
                            try:
                                os.link(source, target)
                            except OSError:  # another file system, or no hard links there
                                shutil.copyfile(source, target)
                fsync_dir(os.path.join(tmp, _SEGMENTS))
                fsync_dir(os.path.join(tmp, _WAL))
                self._manifest.publish(tmp)
                os.rename(tmp, dest)
                fsync_dir(os.path.dirname(dest))
        return dest

    @property
    def closed(self) -> bool:
        """True once :meth:`close` ran."""
        return self._closed

    def close(self) -> None:
        """fsync the log and release the store. Unflushed rows are replayed from the log at next open."""
        if self._read_only:
            with self._refresh_lock:  # not while a refresh swaps in a newly loaded store
                self._close()
        else:
            self._close()

    def _close(self) -> None:
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            self._stopping = True  # an index build in flight stops at its next chunk
            try:
                self._indexer.shutdown(wait=True)
                if not self._read_only:
                    self._wal.close()
                self._janitor.shutdown(wait=True)
            finally:
                if self._lock_fd >= 0:
                    os.close(self._lock_fd)

    @property
    def last_recorded(self) -> datetime | None:
        """The transaction time of the last write this store holds (None before the first): what a reader
        passes to ``changes(since=)`` before a :meth:`refresh` to learn what the refresh brought."""
        return from_us(self._last_recorded) if self._last_recorded else None

    @property
    def read_only(self) -> bool:
        """True when opened ``read_only=True``: it reads beside the writer and writes nothing."""
        return self._read_only

    def refresh(self) -> bool:
        """A read-only store: catch up with what the writer has written since it was opened (or last
        refreshed). When the writer has only written to its logs since, their new records are applied (as
        the writer applied them: reads in other threads see each transaction whole); after a flush or a
        compaction (a new manifest) the store is loaded again, its segments' checksums not checked again.
        Reads running meanwhile finish on what they began with. Returns whether anything had changed
        (nothing is read when the manifest and the logs' sizes are as they were). HNSW indexes the writer
        has built since are loaded too (until then their segments are searched exactly). A store open to
        write is always current (returns False)."""
        self._check_open()
        if not self._read_only:
            return False
        with self._refresh_lock:
            self._check_open()
            for segment in self._segments:  # indexes the writer has built since (it builds in the background)
                if segment.index is None:
                    segment.index = load_hnsw(segment.index_path, segment.vectors.shape[0], self.dim)
            stamp = self._stamp()
            if stamp == self._loaded_stamp:
                return False
            if self._catch_up():
                self._loaded_stamp = stamp
                return True
            fresh = object.__new__(T4DX)
            for name in self._REFRESH_KEEP:
                setattr(fresh, name, getattr(self, name))
            fresh._init(**self._options)
            old = self.__dict__.copy()
            self.__dict__.update(fresh.__dict__)  # one step for other threads (no Python code runs inside)
            old["_indexer"].shutdown(wait=True)
            old["_janitor"].shutdown(wait=True)
            return True

    def _stamp(self) -> tuple[Any, ...]:
        """What a refresh compares: the manifest file and the logs' names and sizes."""
        wal_dir = os.path.join(self.path, _WAL)
        sizes = []
        for number in wal_files(wal_dir):
            with contextlib.suppress(FileNotFoundError):
                sizes.append((number, os.stat(wal_path(wal_dir, number)).st_size))
        with contextlib.suppress(FileNotFoundError):
            manifest = os.stat(os.path.join(self.path, MANIFEST_NAME))
            return manifest.st_ino, manifest.st_mtime_ns, manifest.st_size, tuple(sizes)
        return None, tuple(sizes)

    def __enter__(self) -> T4DX:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._snap.segments)} segments"
        return f"T4DX({self.path!r}, dim={self.dim}, {state})"

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosed(f"store {self.path!r} is closed")

    # ================================================================== writing
    @_writes
    def insert(self, items: Item | Iterable[Item]) -> list[str]:
        """INSERT one item or many (one transaction); returns their ids, assigning UUIDs where ``id`` is None.

        An item whose id already exists becomes that id's new version (the old one is superseded).
        Bad input raises a typed error naming the field and writes nothing.
        """
        self._check_open()
        items = [items] if isinstance(items, Item) else list(items)
        if not items:
            return []
        batch = self._batch_from_items(items)
        self._commit(batch)
        return batch.ids

    @_writes
    def insert_batch(
        self,
        vectors: np.ndarray,
        fields: Sequence[Mapping[str, Any]] | None = None,
        *,
        ids: Sequence[str] | None = None,
        kappa: float | np.ndarray = 0.0,
        kind: str | Sequence[str] = "episode",
        valid_from: datetime | Sequence[datetime] | None = None,
        valid_to: datetime | Sequence[datetime] | None = None,
    ) -> list[str]:
        """INSERT many items given as columns: ``vectors`` ``[n, dim]`` and ``fields`` (n dicts or None).

        ``kappa``, ``kind``, ``valid_from``, ``valid_to`` take one value for all rows or one per row.
        The fast path for bulk loads; same semantics and validation as :meth:`insert`.
        """
        self._check_open()
        vectors = self._check_vectors(vectors, "vectors")
        n = vectors.shape[0]
        if n == 0:
            return []
        if fields is None:
            fields = [{}] * n
        elif len(fields) != n:
            raise InvalidInput("fields", f"<{len(fields)} dicts>", f"expected {n} (one per vector)")
        if ids is not None:
            if len(ids) != n:
                raise InvalidInput("ids", f"<{len(ids)} ids>", f"expected {n} (one per vector)")
            id_list = [check_id(v, f"ids[{i}]") for i, v in enumerate(ids)]
            key_hi, key_lo = keys_of(id_list)
            fresh = False
        else:
            id_list, key_hi, key_lo = new_ids(n)
            fresh = True
        kappas = np.asarray(kappa, dtype=np.float64)
        if kappas.ndim == 0:
            kappas = np.full(n, float(kappas))
        elif kappas.shape != (n,):
            raise InvalidInput("kappa", f"<shape {kappas.shape}>", f"expected a number or shape ({n},)")
        bad = np.flatnonzero(~((kappas >= 0) & (kappas <= 1)))
        if bad.size:
            raise InvalidInput(f"kappa[{bad[0]}]", float(kappas[bad[0]]), "κ must be in [0, 1]")
        kinds_in = kind if isinstance(kind, str) else list(kind)
        if not isinstance(kinds_in, str) and len(kinds_in) != n:
            raise InvalidInput("kind", f"<{len(kinds_in)} kinds>", f"expected a string or {n} of them")
        vf = self._time_column(valid_from, n, "valid_from", _FILL)
        vt = self._time_column(valid_to, n, "valid_to", OPEN)
        # A bulk batch's vectors start for the disk now, while the fields are encoded.
        writer = self._bulk_writer(vectors) if self._is_bulk(n) else None
        try:
            batch = self._build_batch(
                id_list, key_hi, key_lo, vectors, kappas, kinds_in, list(fields), vf, vt, fresh, ""
            )
            return self._commit(batch, writer).ids
        except BaseException:
            if writer is not None:
                writer.abort()
            raise

    @_writes
    def update_fields(
        self,
        id: str,
        changes: Mapping[str, Any] | None = None,
        *,
        kappa: float | None = None,
        kind: str | None = None,
        vector: Any = None,
        valid_from: datetime | None = None,
        valid_to: datetime | None = None,
    ) -> Item:
        """UPDATE_FIELDS: write a new version of ``id`` with ``changes`` merged into its fields.

        The keyword arguments replace those attributes too. The old version is superseded (its
        ``superseded_at`` set), not overwritten. Returns the new version. Unknown ids raise
        :class:`~t4dm.errors.UnknownId`.
        """
        self._check_open()
        check_id(id)
        if changes is not None and not isinstance(changes, Mapping):
            raise InvalidInput("changes", changes, "expected a dict of field changes")
        with self._write_lock:
            self._check_open()
            found = self._locate(id, self._snap)
            if found is None:
                raise UnknownId(id)
            source, row = found
            fields = {**unpack(source.fields_bytes(row)), **(changes or {})}
            new = Item(
                vector=np.array(source.vectors[source.vector_row.item(row)]) if vector is None else vector,
                id=id,
                kappa=float(source.kappa[row]) if kappa is None else kappa,
                kind=source.kinds[source.kind[row]] if kind is None else kind,
                fields=fields,
                valid_from=from_us(int(source.valid_from[row])) if valid_from is None else valid_from,
                valid_to=from_us(int(source.valid_to[row])) if valid_to is None else valid_to,
            )
            batch = self._batch_from_items([new], field_prefix="")
            self._commit(batch)
            snap = self._snap
            source, row = self._locate(id, snap)  # type: ignore[misc]
            return self._item(source, row, snap.seq)

    @_writes
    def update_kappa(self, id: str, *, kappa: float | None = None, delta: float | None = None) -> float:
        """UPDATE_KAPPA: set (``kappa``) or move (``delta``; the result clipped to [0, 1]) the consolidation
        level of item ``id``'s live version, in place.

        An O(1) overlay record, not a new version: readers (GET, SEARCH and SCAN with their κ filters) see it
        at once, a full compaction folds it in, and the change feed gives it (``op="kappa"``). κ is not
        versioned, as weights are not: ``get(as_of=)`` of a past time gives that version with its present κ
        (:meth:`update_fields` with ``kappa=`` writes a new version instead). Returns the new κ; an unknown or
        deleted id raises :class:`~t4dm.errors.UnknownId`.
        """
        if (delta is None) == (kappa is None):
            raise InvalidInput("delta", delta, "give exactly one of kappa= and delta=")
        if delta is not None:
            return self.update_kappas([(id, delta)])[0]
        return self.update_kappas([(id, kappa)], absolute=True)[0]  # type: ignore[list-item]

    @_writes
    def update_kappas(self, updates: Iterable[tuple[str, float]], *, absolute: bool = False) -> list[float]:
        """UPDATE_KAPPA for many items in one transaction: ``(id, delta)`` pairs (or ``(id, kappa)`` with
        ``absolute=True``); an id may appear more than once (in order: deltas add up, each result clipped).

        Every update is checked before anything is written: a bad value or an unknown id raises, naming
        ``updates[i]``, and writes nothing. Returns the new κ of each update, in order.
        """
        self._check_open()
        checked = []
        for i, update in enumerate(updates):
            if not isinstance(update, tuple | list) or len(update) != 2:
                raise InvalidInput(f"updates[{i}]", update, "expected an (id, value) pair")
            id, value = update
            if absolute:
                value = self._check_kappa(value, f"updates[{i}].kappa")
            elif isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InvalidInput(f"updates[{i}].delta", value, "expected a finite number")
            checked.append((check_id(id, f"updates[{i}].id"), float(value)))
        if not checked:
            return []
        with self._write_lock:
            self._check_open()
            located = self._locate_live([id for id, _ in checked], lambda i: f"updates[{i}].id")
            now = {id: float(source.kappa[row]) for id, (source, row) in located.items()}
            out = []
            for id, value in checked:
                now[id] = value if absolute else min(1.0, max(0.0, now[id] + value))
                out.append(now[id])
            self._commit(self._kappa_batch(list(now), np.array(list(now.values()))))
            return out

    @_writes
    def delete(self, ids: str | Iterable[str]) -> None:
        """DELETE: write a tombstone for each id (one transaction). Unknown or deleted ids raise
        :class:`~t4dm.errors.UnknownId` and nothing is deleted."""
        self._end(ids, erase=False)

    @_writes
    def erase(self, ids: str | Iterable[str], *, edges: bool = True) -> None:
        """ERASE: every version of each id goes (one transaction): the right to be forgotten, or consolidation's
        PRUNE. :meth:`delete` keeps the past; this does not.

        Each id gets an erasing tombstone: from now on it is gone as after :meth:`delete`, and the next full
        compaction (:meth:`compact`) drops every row of it, the tombstone too, so that no read of any past
        time finds it any more; until then ``get(as_of=)`` and :meth:`history` of earlier times still do.
        A version written after it (the id inserted again) stays. An id that was deleted may be erased; one
        with no row at all raises :class:`~t4dm.errors.UnknownId` and nothing is written.

        With ``edges`` (the default) every edge leaving or reaching one of the ids is erased the same way,
        whatever its relation, whether live or removed, every version of it (an edge names the id), in
        the same transaction. ``edges=False`` leaves the edges as they are. The change feed gives both as
        ``op="erase"`` (an :class:`Item` or an :class:`Edge`), at the same ``recorded_at``.
        """
        self._end(ids, erase=True, edges=edges)

    def _end(self, ids: str | Iterable[str], erase: bool, edges: bool = False) -> None:
        """One transaction of tombstones, each with its id's last row's times and κ: for live ids (DELETE), or
        erasing ones for ids with any row (ERASE), with erasing tombstones for their edges (``edges``)."""
        self._check_open()
        one = isinstance(ids, str)
        id_list = [ids] if one else list(ids)
        id_list = list(dict.fromkeys(check_id(v, f"ids[{i}]") for i, v in enumerate(id_list)))
        if not id_list:
            return
        with self._write_lock:
            self._check_open()
            snap = self._snap
            found = []
            for i, id in enumerate(id_list):
                hit = next(self._versions(id, snap), None) if erase else self._locate(id, snap)
                if hit is None:
                    raise UnknownId(id, "id" if one else f"ids[{i}]")
                found.append(hit)
            batch = self._tombstones(
                id_list,
                np.array([s.valid_from[r] for s, r in found], dtype=np.int64),
                np.array([s.valid_to[r] for s, r in found], dtype=np.int64),
                np.array([s.kappa[r] for s, r in found], dtype=np.float64),
                erase=erase,
            )
            if erase and edges:  # the edges' erasures in the same transaction
                erasures = self._edge_tombstones(self._edges_touching(id_list, snap), erase=True)
                if erasures is not None:
                    batch = VersionBatch.concat([erasures, batch], self.dim)
            self._commit(batch)

    def _edges_touching(self, ids: list[str], snap: _Snapshot) -> list[tuple[str, Any, int]]:
        """``(edge id, source, row of its newest version)`` of every edge leaving or reaching one of ``ids``
        that has a row in ``snap`` and is not erased already. Every version of such an edge has the same
        ends, so the rows found hold them all: the newest is the one of highest seq."""
        newest: dict[str, tuple[int, Any, int]] = {}  # edge id -> (seq, source, row)
        for source, rows in touching_rows(_sources(snap), *keys_of(ids)):
            for id, row, seq in zip(
                source.ids_at(rows), rows.tolist(), source.seq[rows].tolist(), strict=True
            ):
                if id not in newest or seq > newest[id][0]:
                    newest[id] = (seq, source, row)
        return [(id, s, r) for id, (_, s, r) in newest.items() if not s.flags[r] & FLAG_ERASE]

    def _edge_tombstones(self, found: list[tuple[str, Any, int]], erase: bool = False) -> VersionBatch | None:
        """Tombstones (erasing ones with ``erase``) for edges ``(edge id, source, row)``, each a copy of that
        row's ends, relation, stored weight and valid times; None for no edge."""
        if not found:
            return None
        ids = [id for id, _, _ in found]
        n = len(ids)
        batch = self._build_batch(
            ids, *keys_of(ids), np.empty((n, 0), np.float32), np.zeros(n),
            [source.kinds[source.kind[row]] for _, source, row in found], [{}] * n,
            np.array([source.valid_from[row] for _, source, row in found], dtype=np.int64),
            np.array([source.valid_to[row] for _, source, row in found], dtype=np.int64), False, "",
        )  # fmt: skip
        batch.flags[:] = FLAG_EDGE | FLAG_TOMBSTONE | (FLAG_ERASE if erase else 0)
        for name in ("src_hi", "src_lo", "dst_hi", "dst_lo", "weight"):
            getattr(batch, name)[:] = [getattr(source, name)[row] for _, source, row in found]
        return batch

    def _tombstones(
        self,
        id_list: list[str],
        valid_from: np.ndarray,
        valid_to: np.ndarray,
        kappa: np.ndarray,
        erase: bool = False,
    ) -> VersionBatch:
        """Tombstone rows for the checked ``id_list`` (each keeps its last version's times and κ); erasing ones
        (ERASE) with ``erase``."""
        n = len(id_list)
        batch = self._build_batch(
            id_list, *keys_of(id_list), np.zeros((n, self.dim), np.float32), kappa, "tombstone", [{}] * n,
            valid_from, valid_to, False, "",
        )  # fmt: skip
        batch.flags[:] = (FLAG_TOMBSTONE | FLAG_ERASE) if erase else FLAG_TOMBSTONE
        return batch

    # ------------------------------------------------------------------ commit
    def _commit(
        self, batch: VersionBatch, writer: SegmentWriter | None = None, recorded_at: int | None = None
    ) -> VersionBatch:
        """Log, apply and publish one batch (one transaction), then wait for its durability.

        A batch of at least half the memtable's size goes straight to a segment instead
        (:meth:`_ingest`); ``writer`` is that segment's writer when the caller started it early.
        ``recorded_at`` (a replay, checked by the caller to be later than every earlier write) is the
        transaction time instead of the clock's.
        """
        with self._write_lock:
            self._check_open()
            batch.seq_start = self._seq + 1
            if recorded_at is None:
                batch.recorded_at = self._tick()
            else:
                assert recorded_at > self._last_recorded, "a replayed transaction time must move forward"
                batch.recorded_at = self._last_recorded = recorded_at
            fill = batch.valid_from == _FILL
            if fill.any():
                batch.valid_from = np.where(fill, batch.recorded_at, batch.valid_from)
            empty = np.flatnonzero(batch.valid_to <= batch.valid_from)
            if empty.size:
                i = int(empty[0])
                raise InvalidTime(
                    "valid_to",
                    from_us(int(batch.valid_to[i])),
                    f"must be after valid_from {from_us(int(batch.valid_from[i]))} (row {i})",
                )
            if writer is not None or batch.vectors.nbytes >= self._memtable_bytes // 2:
                self._ingest(batch, writer)
                return batch
            position = self._wal.append(batch.encode())
            self._apply(batch)
            if self._mem.nbytes >= self._memtable_bytes:
                self._flush_locked()
        self._wal.wait_durable(position)
        return batch

    def _is_bulk(self, n: int) -> bool:
        return n * self.dim * 4 >= self._memtable_bytes // 2

    def _bulk_writer(self, vectors: np.ndarray) -> SegmentWriter:
        """Start writing a bulk batch's vectors (arrival order) while the caller encodes the rest."""
        tmp = os.path.join(self.path, _SEGMENTS, f"ingest-{os.urandom(8).hex()}.tmp")
        writer = SegmentWriter(tmp, self.dim, len(vectors))
        writer.start_vectors([vectors])
        return writer

    def _ingest(self, batch: VersionBatch, writer: SegmentWriter | None = None) -> None:
        """Write a large batch straight to a new segment, skipping the log and the memtable.

        The memtable is flushed first, so segments stay older than the memtable (sequence order).
        Durable once the segment is fsynced and the manifest names it, whatever the durability mode.
        """
        self._flush_locked(auto_compact=False)
        older = self._segments
        source = _BatchSource(batch)
        order = np.lexsort((source.seq, source.key_lo, source.key_hi))
        items_only = not (batch.flags & NOT_ITEM).any()
        rows = assemble([source], np.zeros(batch.n, dtype=np.int32), order, base=0 if items_only else None)
        version_chains(rows.columns)  # an id may repeat inside the batch
        segment = self._write_rows(rows, writer)
        self._install(removed=(), added=segment, index=len(self._segments))
        self._schedule_index(segment)
        # Only now, with the batch durable and named by the manifest, close the older versions.
        if not batch.fresh:
            _, first = np.unique(np.stack([batch.key_hi, batch.key_lo], axis=1), axis=0, return_index=True)
            self._supersede_in_segments(batch, np.sort(first).astype(np.int64), older)
        self._seq = batch.seq_start + batch.n - 1
        self._publish()
        if len(self._segments) > self._max_segments:
            self._auto_compact()

    def _tick(self) -> int:
        now = self._clock()
        recorded = max(to_us(now, "clock()"), self._last_recorded + 1)
        self._last_recorded = recorded
        return recorded

    def _apply(self, batch: VersionBatch) -> None:
        """Put a logged batch into the memtable, supersede older versions, publish (live and replay)."""
        if batch.n and batch.flags[0] & FLAG_SCALE:  # BATCH_SCALE_WEIGHTS: one factor, no row
            rel, factor = batch.kinds[int(batch.kind[0])], float(batch.weight[0])
            self._scales = _with_scale(self._scales, rel, factor)
            self._scale_log = (*self._scale_log, (batch.seq_start, batch.recorded_at, rel, factor))
        else:
            unseen = self._mem.append(batch)
            if unseen:
                self._supersede_in_segments(batch, np.asarray(unseen, dtype=np.int64), self._segments)
            overlays = np.flatnonzero(batch.flags & FLAG_OVERLAY)
            if overlays.size:
                self._publish()  # the overlays' targets are older rows: find them in this snapshot
                if batch.flags[overlays[0]] & FLAG_EDGE:
                    for i in overlays.tolist():
                        self._set_weight(batch.ids[i][:-1], float(batch.weight[i]), batch.seq_start + i)
                else:
                    # a batch's κ overlays name distinct items, each set on its live version (what it is
                    # before this batch, live or replayed): found together, as a GET of many ids
                    items = [batch.ids[i][len(_KAPPA_PREFIX) :] for i in overlays.tolist()]
                    hits = self._locate_many(items, self._snap)
                    self._set_kappas(
                        [(*hit, float(k)) for hit, k in zip(hits, batch.kappa[overlays], strict=True) if hit]
                    )
        self._seq = batch.seq_start + batch.n - 1
        self._last_recorded = max(self._last_recorded, batch.recorded_at)
        self._publish()

    @staticmethod
    def _supersede_in_segments(
        batch: VersionBatch, positions: np.ndarray, segments: tuple[Segment, ...]
    ) -> None:
        """Close the live version, in ``segments``, of the ids at ``positions`` of ``batch``.

        Each id's newest version is in the newest segment that holds it; ``positions`` must name each
        id once (its first row in the batch).
        """
        pending = positions
        for segment in reversed(segments):
            rows = segment.latest_rows(batch.key_hi[pending], batch.key_lo[pending])
            hit = rows >= 0
            if hit.any():
                segment.set_links(
                    batch.seq_start + pending[hit].astype(np.uint64),
                    np.full(int(hit.sum()), batch.recorded_at, dtype=np.int64),
                    rows[hit],
                )
                pending = pending[~hit]
                if not pending.size:
                    break

    def _publish(self) -> None:
        self._snap = _Snapshot(
            self._seq, self._mem, self._mem.n, self._segments,
            self._scales, self._scale_log, self._scale_base, self._folded_through,
        )  # fmt: skip

    # ------------------------------------------------------------------ validation
    def _check_vectors(self, vectors: Any, field: str) -> np.ndarray:
        try:
            array = np.asarray(vectors)
        except (ValueError, TypeError) as exc:
            raise InvalidVector(field, vectors, f"not an array of numbers: {exc}") from exc
        if array.dtype.kind not in "fiu":
            raise InvalidVector(field, f"<dtype {array.dtype}>", "expected a float or integer array")
        if array.ndim != 2:
            raise InvalidVector(field, f"<shape {array.shape}>", f"expected shape [n, {self.dim}]")
        if array.shape[1] != self.dim:
            raise DimensionMismatch(field, f"<shape {array.shape}>", self.dim)
        with np.errstate(over="ignore"):
            array = np.ascontiguousarray(array, dtype=np.float32)
        finite = np.isfinite(array).all(axis=1)
        if not finite.all():
            row = int(np.flatnonzero(~finite)[0])
            raise InvalidVector(f"{field}[{row}]", "<NaN or inf>", "vectors must be finite (float32)")
        return array

    def _time_column(self, value: Any, n: int, field: str, default: int) -> np.ndarray:
        if value is None:
            return np.full(n, default, dtype=np.int64)
        if isinstance(value, datetime):
            return np.full(n, to_us(value, field), dtype=np.int64)
        values = list(value)
        if len(values) != n:
            raise InvalidInput(field, f"<{len(values)} times>", f"expected one datetime or {n} of them")
        return np.array(
            [default if v is None else to_us(v, f"{field}[{i}]") for i, v in enumerate(values)],
            dtype=np.int64,
        )

    def _batch_from_items(self, items: list[Item], field_prefix: str | list[str] = "items") -> VersionBatch:
        n = len(items)
        vectors = np.empty((n, self.dim), dtype=np.float32)
        ids: list[str] = []
        kappas = np.empty(n, dtype=np.float64)
        kinds: list[str] = []
        fields: list[Any] = []
        valid_from = np.empty(n, dtype=np.int64)
        valid_to = np.empty(n, dtype=np.int64)
        generated = [i for i, item in enumerate(items) if isinstance(item, Item) and item.id is None]
        made, made_hi, made_lo = new_ids(len(generated)) if generated else ([], None, None)
        fresh_ids = iter(made)
        for i, item in enumerate(items):
            where = _field(field_prefix, i, "")
            if not isinstance(item, Item):
                raise InvalidInput(where[:-1], item, "expected an Item")
            vectors[i] = self._check_vector(item.vector, where + "vector")
            ids.append(next(fresh_ids) if item.id is None else check_id(item.id, where + "id"))
            kappas[i] = self._check_kappa(item.kappa, where + "kappa")
            kinds.append(item.kind)
            fields.append(item.fields)
            for name in ("recorded_at", "superseded_at"):
                if getattr(item, name) is not None:
                    raise InvalidTime(
                        where + name, getattr(item, name),
                        "transaction time is assigned by the store: pass None (dataclasses.replace(item, recorded_at=None, superseded_at=None))",
                    )  # fmt: skip
            valid_from[i] = _FILL if item.valid_from is None else to_us(item.valid_from, where + "valid_from")
            valid_to[i] = OPEN if item.valid_to is None else to_us(item.valid_to, where + "valid_to")
        fresh = len(generated) == n
        key_hi, key_lo = (made_hi, made_lo) if fresh else keys_of(ids)
        return self._build_batch(
            ids, key_hi, key_lo, vectors, kappas, kinds, fields, valid_from, valid_to, fresh, field_prefix
        )

    def _check_vector(self, vector: Any, field: str) -> np.ndarray:
        try:
            array = np.asarray(vector)
        except (ValueError, TypeError) as exc:
            raise InvalidVector(field, vector, f"not an array of numbers: {exc}") from exc
        if array.dtype.kind not in "fiu":
            raise InvalidVector(field, vector, f"expected numbers, got dtype {array.dtype}")
        if array.shape != (self.dim,):
            raise DimensionMismatch(field, f"<shape {array.shape}>", self.dim)
        if array.dtype != np.float32:
            with np.errstate(over="ignore"):  # float32 overflow becomes inf, refused just below
                array = array.astype(np.float32)
        else:
            array = array.copy()  # the caller keeps its array
        # one reduction instead of isfinite + all: a float64 sum of float32 values cannot overflow,
        # and NaN or inf anywhere makes it non-finite
        if not math.isfinite(np.add.reduce(array, dtype=np.float64)):
            raise InvalidVector(field, "<NaN or inf>", "vectors must be finite (float32)")
        return array

    @staticmethod
    def _check_kappa(kappa: Any, field: str) -> float:
        if isinstance(kappa, bool) or not isinstance(kappa, numbers.Real) or not 0.0 <= float(kappa) <= 1.0:
            raise InvalidInput(field, kappa, "κ must be a number in [0, 1]")
        return float(kappa)

    def _build_batch(
        self,
        ids: list[str],
        key_hi: np.ndarray,
        key_lo: np.ndarray,
        vectors: np.ndarray,
        kappas: np.ndarray,
        kinds: str | list[str],
        fields: list[Any],
        valid_from: np.ndarray,
        valid_to: np.ndarray,
        fresh: bool,
        prefix: str | list[str],
    ) -> VersionBatch:
        """Encode kinds, tags and payloads of validated columns into a batch (checks fields and kinds).

        ``kinds`` is one kind for every row or one per row. This loop is the per-row cost of a bulk
        insert (about 2 µs a row here), so it keeps to Python lists and C calls.
        """
        n = len(ids)
        if isinstance(kinds, str):
            kind_names, kind = [kinds], np.zeros(n, dtype=np.uint16)
        else:
            kind_index: dict[str, int] = {}
            kind_codes = [
                kind_index.setdefault(name, len(kind_index)) if type(name) is str else -1 for name in kinds
            ]
            kind_names, kind = list(kind_index), np.asarray(kind_codes, dtype=np.int64)
            if (kind < 0).any():
                i = int(np.flatnonzero(kind < 0)[0])
                raise InvalidInput(_field(prefix, i, "kind"), kinds[i], "kind must be a non-empty string")
            kind = kind.astype(np.uint16)
        for name in kind_names:
            if not name or len(name) > 255:
                row = 0 if isinstance(kinds, str) else list(kinds).index(name)
                raise InvalidInput(
                    _field(prefix, row, "kind"), name, "kind must be a non-empty string (≤ 255 chars)"
                )
        if len(kind_names) > MAX_KINDS:
            raise InvalidInput(
                "kind", f"<{len(kind_names)} kinds>", f"at most {MAX_KINDS} kinds in one write"
            )
        tag_codes: list[dict[str, int]] = [{} for _ in TAG_FIELDS]
        tag_rows: list[list[int]] = [[] for _ in TAG_FIELDS]
        slots = list(zip(TAG_FIELDS, tag_codes, tag_rows, strict=True))
        chunks: list[bytes] = []
        pack = _pack
        for i, record in enumerate(fields):
            if type(record) is not dict:
                if not isinstance(record, Mapping):
                    raise PayloadNotSerializable(_field(prefix, i, "fields"), record, "fields must be a dict")
                record = dict(record)
            for key in record:
                if type(key) is not str:
                    raise PayloadNotSerializable(
                        _field(prefix, i, "fields"), key, "field names must be strings"
                    )
            try:
                chunks.append(pack(record))
            except (TypeError, ValueError, OverflowError) as exc:
                raise PayloadNotSerializable(
                    _field(prefix, i, "fields"), record, f"not JSON-like: {exc}"
                ) from exc
            for tag, codes, out in slots:
                value = record.get(tag, _MISSING)
                if type(value) is str:
                    out.append(codes.setdefault(value, len(codes)))
                else:
                    out.append(TAG_ABSENT if value is _MISSING else TAG_OTHER)
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, chunks), dtype=np.int64, count=n), out=offsets[1:])
        tags = np.array(tag_rows, dtype=np.int32).T.copy() if n else np.empty((0, len(TAG_FIELDS)), np.int32)
        bad = [
            i
            for i, (vf, vt) in enumerate(zip(valid_from.tolist(), valid_to.tolist(), strict=True))
            if vt <= vf != _FILL
        ]
        if bad:
            i = bad[0]
            raise InvalidTime(
                _field(prefix, i, "valid_to"), from_us(int(valid_to[i])), "must be after valid_from"
            )
        return VersionBatch(
            seq_start=0,
            recorded_at=0,
            key_hi=key_hi,
            key_lo=key_lo,
            valid_from=valid_from,
            valid_to=valid_to,
            kappa=kappas.astype(np.float64),
            kind=kind,
            flags=np.zeros(n, dtype=np.uint8),
            tags=tags,
            vectors=vectors,
            kinds=kind_names,
            tag_values=[list(codes) for codes in tag_codes],
            ids=ids,
            payload_offsets=offsets,
            payload=b"".join(chunks),
            fresh=fresh,
        )

    # ================================================================== reading
    def get(self, id: str, *, as_of: datetime | None = None) -> Item | None:
        """GET the live version of ``id`` (None if absent or deleted).

        ``as_of`` asks for the version the store knew at that transaction time instead.
        """
        self._check_open()
        snap = self._snap
        if as_of is not None:
            at = to_us(as_of, "as_of")
            for source, row in self._versions(check_id(id), snap):
                if source.recorded_at[row] <= at and (
                    source.next_seq[row] > snap.seq or source.superseded_at[row] > at
                ):
                    return None if source.flags[row] & FLAG_TOMBSTONE else self._item(source, row, snap.seq)
            return None
        found = self._locate(id, snap)
        return None if found is None else self._item(found[0], found[1], snap.seq, id)

    def get_many(self, ids: Iterable[str], *, as_of: datetime | None = None) -> list[Item | None]:
        """GET for many ids at once: the live version of each (or the one known at ``as_of``), None where
        there is none, in the order given. The ids are located together (the memtable's dict, then one
        batched Bloom probe and binary search per segment) and each source's items built in one pass."""
        self._check_open()
        keys = [check_id(key, f"ids[{i}]") for i, key in enumerate(ids)]
        if as_of is not None:
            to_us(as_of, "as_of")
            return [self.get(key, as_of=as_of) for key in keys]
        snap = self._snap
        out: list[Item | None] = [None] * len(keys)
        for source, rows, positions in self._located_by_source(keys, snap):
            items = self._items(source, rows, snap.seq, ids=[keys[p] for p in positions])
            for position, item in zip(positions, items, strict=True):
                out[position] = item
        return out

    def _located_by_source(self, keys: list[str], snap: _Snapshot) -> list[tuple[Any, np.ndarray, list[int]]]:
        """The live versions of ``keys`` grouped by source: ``(source, rows, positions in keys)`` (absent and
        deleted keys in none), located together (:meth:`_locate_many`)."""
        groups: dict[int, tuple[Any, list[int], list[int]]] = {}
        for position, found in enumerate(self._locate_many(keys, snap)):
            if found is not None:
                group = groups.setdefault(id(found[0]), (found[0], [], []))
                group[1].append(found[1])
                group[2].append(position)
        return [
            (source, np.asarray(rows, dtype=np.int64), positions)
            for source, rows, positions in groups.values()
        ]

    def matching(
        self,
        ids: Iterable[str],
        *,
        kappa: tuple[float, float] | None = None,
        kind: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        valid_at: datetime | None = None,
        known_at: datetime | None = None,
        valid_from: tuple[datetime, datetime] | None = None,
    ) -> list[str]:
        """The ids among ``ids`` (in their order) whose item passes every filter of :meth:`scan`: the check of
        a SEARCH or SCAN applied to named items, on the columns (a payload is decoded only for a ``where``
        field that is not an indexed column), without building the items. Absent and deleted ids fail."""
        self._check_open()
        f = parse_filter(kappa, kind, where, valid_at, known_at, valid_from)
        keys = [check_id(key) for key in ids]
        if f.known_us is not None:  # the version of that time, found by walking the versions
            return [
                key
                for key in keys
                if self._passes(self.get(key, as_of=known_at), kappa, kind, where, valid_at, valid_from)
            ]
        snap = self._snap
        sizes = {id(source): n for source, n in _sources(snap)}
        passed = [False] * len(keys)
        for source, rows, positions in self._located_by_source(keys, snap):
            selected, checks = match_rows(source, sizes[id(source)], snap.seq, f, within=rows)
            good = set(check_payloads(source, selected, checks).tolist())
            for row, position in zip(rows.tolist(), positions, strict=True):
                passed[position] = row in good
        return [key for key, ok in zip(keys, passed, strict=True) if ok]

    @staticmethod
    def _passes(
        item: Item | None,
        kappa: tuple[float, float] | None,
        kind: str | Iterable[str] | None,
        where: Mapping[str, Any] | None,
        valid_at: datetime | None,
        valid_from: tuple[datetime, datetime] | None,
    ) -> bool:
        """The filters of :meth:`scan` on one item (the ``known_at`` path of :meth:`matching`)."""
        if item is None:
            return False
        if kappa is not None and not kappa[0] <= item.kappa <= kappa[1]:
            return False
        if kind is not None and item.kind not in ({kind} if isinstance(kind, str) else set(kind)):
            return False
        if where is not None and not all(
            name in item.fields and same(item.fields[name], value) for name, value in where.items()
        ):
            return False
        start, end = item.valid_from, item.valid_to
        if valid_at is not None and not (
            (start is None or start <= valid_at) and (end is None or valid_at < end)
        ):
            return False
        return valid_from is None or (start is not None and valid_from[0] <= start < valid_from[1])

    def history(self, id: str) -> list[Item]:
        """Every stored version of ``id`` (deletions excluded), oldest first; ``superseded_at`` tells
        when each was replaced or deleted."""
        self._check_open()
        snap = self._snap
        versions = list(self._versions(check_id(id), snap))
        return [self._item(s, r, snap.seq) for s, r in reversed(versions) if not s.flags[r] & FLAG_TOMBSTONE]

    # ------------------------------------------------------------------ change feed
    def changes(self, *, since: datetime | None = None) -> Iterator[Change]:
        """Every write the store holds as :class:`Change` records, in the order they were written (``seq``):
        item and edge versions (``"put"``), deletions (``"delete"``), edge weights set (``"weight"``) and
        batch scales (``"scale"``); with ``since``, those recorded after that time only.

        What :meth:`replay` takes: a store's changes replayed into an empty store give it the same
        history (:meth:`history`, ``get(as_of=)``, ``scan(known_at=)``, ``edges(known_at=)``) and the same
        weights; a follower that replays ``changes(since=t)``, ``t`` the ``recorded_at`` of the last change
        it has, stays a copy. Weights are not versions: an edge read ``known_at`` a past time has the weight
        it has now, in both stores.

        A full compaction folds weight overlays and scales into the edges, drops expired versions and
        tombstones, and lets its policy change κ or drop rows in place: none of that is a change to give
        any more. ``since`` before the last such loss (:attr:`folded_through`) raises
        :class:`~t4dm.errors.InvalidTime`: the follower must copy the store anew (``changes()`` into an empty
        store); ``changes()`` without ``since`` always gives the store as it stands. A copy holds what the folds
        took in, so it goes on from the later of its last change's ``recorded_at`` and :attr:`folded_through`
        read just before the copy (from its last change alone it could be refused again at once).
        """
        self._check_open()
        since_us = None if since is None else to_us(since, "since")
        snap = self._snap  # one snapshot: what it holds and what its compactions folded agree
        if since_us is not None and since_us < snap.folded_through:
            raise InvalidTime(
                "since", since,
                f"a full compaction folded or dropped changes recorded up to {from_us(snap.folded_through)} "
                "(or changed rows in place): copy the store anew, from changes() without since",
            )  # fmt: skip
        weights = _ScaleHistory(snap.scale_base, snap.scale_log)
        sources = _sources(snap)
        places, rows, seqs = [], [], []
        for place, (source, n) in enumerate(sources):
            found = np.arange(n) if since_us is None else np.flatnonzero(source.recorded_at[:n] > since_us)
            places.append(np.full(found.size, place, dtype=np.int64))
            rows.append(found)
            seqs.append(source.seq[found])
        place_of, row_of = np.concatenate(places), np.concatenate(rows)
        order = np.argsort(np.concatenate(seqs), kind="stable")
        scales = [
            Change(seq, "scale", WeightScale(factor, None if rel == "*" else rel, from_us(recorded)))
            for seq, recorded, rel, factor in snap.scale_log
            if since_us is None or recorded > since_us
        ]

        def rows_in_order() -> Iterator[Change]:
            for start in range(0, order.size, _SCAN_CHUNK):
                chunk = order[start : start + _SCAN_CHUNK]
                out: list[Change | None] = [None] * chunk.size
                for place in np.unique(place_of[chunk]).tolist():
                    at = np.flatnonzero(place_of[chunk] == place)
                    picked = row_of[chunk[at]]
                    for i, change in zip(
                        at.tolist(), self._changes(sources[place][0], picked, snap, weights), strict=True
                    ):
                        out[i] = change
                yield from out  # type: ignore[misc]

        # the scales are in no source's rows: merged in by their write sequence numbers
        yield from heapq.merge(rows_in_order(), scales, key=lambda change: change.seq)

    @property
    def folded_through(self) -> datetime | None:
        """The change feed lacks changes recorded at or before this time (None: it lacks none): see
        :meth:`changes`."""
        folded = self._snap.folded_through
        return from_us(folded) if folded else None

    def _changes(
        self, source: Any, rows: np.ndarray, snap: _Snapshot, weights: _ScaleHistory
    ) -> list[Change]:
        """The :class:`Change` of each of ``rows`` of ``source``, in order."""
        flags = source.flags[rows]
        seqs = source.seq[rows].tolist()
        out: list[Change | None] = [None] * rows.size
        items = np.flatnonzero((flags & NOT_ITEM) == 0)
        for i, item in zip(items.tolist(), self._items(source, rows[items], snap.seq), strict=True):
            out[i] = Change(seqs[i], "put", item)
        superseded = np.where(source.next_seq[rows] <= np.uint64(snap.seq), source.superseded_at[rows], OPEN)
        for i in np.flatnonzero((flags & NOT_ITEM) != 0).tolist():
            row = int(rows[i])
            tombstone = bool(flags[i] & FLAG_TOMBSTONE)
            overlay = bool(flags[i] & FLAG_OVERLAY)
            times = (
                from_us(int(source.valid_from[row])),
                from_us(int(source.valid_to[row])),
                from_us(int(source.recorded_at[row])),
                None if overlay else from_us(int(superseded[i])),
            )
            if overlay and not flags[i] & FLAG_EDGE:  # a κ overlay
                id = source.id_at(row)[len(_KAPPA_PREFIX) :]
                out[i] = Change(seqs[i], "kappa", KappaUpdate(id, float(source.kappa[row]), times[2]))
            elif flags[i] & FLAG_EDGE:
                id = source.id_at(row)
                src, rel, dst = id[len(EDGE_PREFIX) : -1 if overlay else None].split(EDGE_SEPARATOR)
                # the weight as of this change: the stored weight times the scales written before it
                weight = float(source.weight[row]) * weights.before(seqs[i], rel)
                if overlay:
                    op = "weight"
                elif tombstone:
                    op = "erase" if flags[i] & FLAG_ERASE else "delete"
                else:
                    op = "put"
                out[i] = Change(seqs[i], op, Edge(src, dst, rel, weight, *times))
            else:  # an item's tombstone, erasing or not
                item = Item(None, source.id_at(row), float(source.kappa[row]), "tombstone", {}, *times)
                out[i] = Change(seqs[i], "erase" if flags[i] & FLAG_ERASE else "delete", item)
        return out  # type: ignore[return-value]

    @_writes
    def replay(self, changes: Iterable[Change]) -> int:
        """Write ``changes`` (e.g. another store's :meth:`changes`, its vectors perhaps re-embedded) at their
        own transaction times; returns the number of transactions written.

        The changes that share one ``recorded_at`` (they must be adjacent) become one transaction at that
        time, and must all be of one sort: item versions, item deletions, erasures (of items and their
        edges together), κ updates, edge versions, edge removals or edge weights (as one transaction of a
        store is; stores written before 2026-12-07 recorded a compaction policy's items and their
        provenance edges at one time, and those edges are written as the next transaction, 1 µs later); a
        batch scale is a transaction of its own. Times must rise from each transaction to the next, the
        first must be later than every write this store has made, and the last must not be ahead of its
        clock: so the store keeps one timeline, and what it knew at any time before the replay does not
        change. A put's ``superseded_at`` is ignored (the next version sets it); a deletion, a weight or a κ
        update must name an item or edge that is live at that point (an erasure need not). An edge's
        endpoints are not checked (they were when it was first written). Everything is checked before the
        first write: a bad change raises a typed error naming ``changes[i]`` and nothing is written.
        """
        self._check_open()
        changes = list(changes)
        groups = self._replay_groups(changes)
        with self._write_lock:
            self._check_open()
            if groups:
                first, last = groups[0][0], groups[-1][0]
                if first <= self._last_recorded:
                    raise InvalidTime(
                        "changes[0].recorded_at",
                        from_us(first),
                        f"must be later than this store's last write ({from_us(self._last_recorded)}): "
                        "replay into a new store, or one whose history ends before the changes begin",
                    )
                now = to_us(self._clock(), "clock()")
                if last > now:
                    raise InvalidTime(
                        f"changes[{groups[-1][1]}].recorded_at",
                        from_us(last),
                        f"is ahead of the clock ({from_us(now)})",
                    )
            batches = self._replay_batches(changes, groups)
            for (recorded_at, _, _), batch in zip(groups, batches, strict=True):
                self._commit(batch, recorded_at=recorded_at)
        return len(groups)

    @staticmethod
    def _replay_groups(changes: list[Change]) -> list[tuple[int, int, int]]:
        """``(recorded_at µs, start, stop)`` of each transaction of a replay, checked for order and sort."""
        groups: list[tuple[int, int, int]] = []
        sorts = None
        source_t = None  # the source's transaction time of the last group (a legacy split moves it on)
        for i, change in enumerate(changes):
            where = f"changes[{i}]"
            if not isinstance(change, Change):
                raise InvalidInput(where, change, "expected a Change")
            if change.op not in _REPLAY_RECORDS:
                raise InvalidInput(f"{where}.op", change.op, f"expected one of {sorted(_REPLAY_RECORDS)}")
            if not isinstance(change.record, _REPLAY_RECORDS[change.op]):
                expected = " or ".join(t.__name__ for t in _REPLAY_RECORDS[change.op])
                raise InvalidInput(
                    f"{where}.record", change.record, f"a {change.op} change needs an {expected}"
                )
            if change.recorded_at is None:
                raise InvalidTime(
                    f"{where}.recorded_at", None, "a replayed change needs its transaction time"
                )
            t = to_us(change.recorded_at, f"{where}.recorded_at")
            # an erasure's items and their edges are one sort (ERASE writes them as one transaction)
            sort = ("erase", Item) if change.op == "erase" else (change.op, type(change.record))
            if groups and t == source_t:
                if change.op == "scale" or sorts[0] == "scale":  # type: ignore[index]
                    raise InvalidInput(
                        where,
                        f"{change.op} at {change.recorded_at}",
                        "a batch scale is a transaction of its own",
                    )
                if _legacy_provenance(sorts, change):
                    # Stores before 2026-12-07 wrote a compaction policy's new items and their provenance
                    # edges in one transaction: the edges are written as the next one, 1 µs later.
                    if sorts[0] == "provenance":  # type: ignore[index]
                        groups[-1] = (groups[-1][0], groups[-1][1], i + 1)
                    else:
                        groups.append((groups[-1][0] + 1, i, i + 1))
                        sorts = ("provenance", Edge)
                    continue
                if sort != sorts:
                    before = "erase" if sorts[0] == "erase" else f"{sorts[0]} {sorts[1].__name__}"  # type: ignore[index]
                    raise InvalidInput(
                        where, f"{change.op} {type(change.record).__name__}",
                        f"one transaction (recorded_at {change.recorded_at}) holds one sort of change: "
                        f"{before} before it",
                    )  # fmt: skip
                groups[-1] = (groups[-1][0], groups[-1][1], i + 1)
                continue
            if groups and t <= groups[-1][0]:
                raise InvalidTime(
                    f"{where}.recorded_at", change.recorded_at,
                    f"transaction times must rise (the change before was recorded at {from_us(groups[-1][0])})",
                )  # fmt: skip
            groups.append((t, i, i + 1))
            sorts, source_t = sort, t
        return groups

    def _replay_batches(
        self, changes: list[Change], groups: list[tuple[int, int, int]]
    ) -> list[VersionBatch]:
        """One checked batch per transaction of a replay (under the write lock; nothing written)."""
        live: dict[str, bool] = {}  # id -> live after the changes so far (ids the replay has touched)

        def is_live(id: str) -> bool:
            if id not in live:
                live[id] = self._locate(id, self._snap) is not None
            return live[id]

        scales = dict(self._scales)  # as they will be when each batch is written

        def build(indices: list[int]) -> VersionBatch:
            """The batch of the changes at ``indices``: one sort of change."""
            nonlocal scales
            part = [changes[i] for i in indices]
            names = [f"changes[{i}].record" for i in indices]
            op, record = part[0].op, part[0].record
            if isinstance(record, WeightScale):
                batch, key = self._scale_batch(record.factor, record.rel, f"{names[0]}.")
                scales = _with_scale(scales, key, float(record.factor))
            elif isinstance(record, KappaUpdate):
                targets: dict[str, float] = {}  # one overlay per item: its last value
                for change, name in zip(part, names, strict=True):
                    id = check_id(change.record.id, f"{name}.id")
                    if not is_live(id):
                        raise UnknownId(id, f"{name}.id")
                    targets[id] = self._check_kappa(change.record.kappa, f"{name}.kappa")
                batch = self._kappa_batch(list(targets), np.array(list(targets.values())))
            elif isinstance(record, Item):
                items = [c.record for c in part]
                ids = [check_id(item.id, f"{name}.id") for item, name in zip(items, names, strict=True)]
                if op == "put":
                    timeless = [dataclasses.replace(it, recorded_at=None, superseded_at=None) for it in items]
                    batch = self._batch_from_items(timeless, names)
                else:
                    for id, name in zip(ids, names, strict=True):
                        if op == "delete" and not is_live(id):  # an erase needs no live version
                            raise UnknownId(id, f"{name}.id")
                        live[id] = False  # at once: the same id deleted twice in one transaction is refused
                    batch = self._tombstones(
                        ids,
                        self._time_column([it.valid_from for it in items], len(ids), "valid_from", _FILL),
                        self._time_column([it.valid_to for it in items], len(ids), "valid_to", OPEN),
                        np.array(
                            [
                                self._check_kappa(it.kappa, f"{n}.kappa")
                                for it, n in zip(items, names, strict=True)
                            ]
                        ),
                        erase=op == "erase",
                    )  # an unknown valid_from is filled with the transaction time by _commit
                for id in ids:
                    live[id] = op == "put"
            else:
                edges = [c.record for c in part]
                columns = self._edge_columns(
                    [e.src for e in edges], [e.dst for e in edges], [e.rel for e in edges],
                    [e.weight for e in edges], [e.valid_from for e in edges], [e.valid_to for e in edges],
                    lambda i, name: f"changes[{indices[i]}].record.{name}",
                )  # fmt: skip
                batch = self._edge_batch(*columns, scales=scales)
                ids = batch.ids
                if op == "weight":
                    for id, name in zip(ids, names, strict=True):
                        if not is_live(id):
                            raise UnknownId(id, name)
                    return self._overlay_batch(batch)
                if op in ("delete", "erase"):
                    for id, name in zip(ids, names, strict=True):
                        if op == "delete" and not is_live(id):  # an erase needs no live version
                            raise UnknownId(id, name)
                        live[id] = False  # at once, as for items
                    batch.flags[:] = FLAG_EDGE | FLAG_TOMBSTONE | (FLAG_ERASE if op == "erase" else 0)
                for id in ids:
                    live[id] = op == "put"
            return batch

        batches = []
        for _, start, stop in groups:
            indices = list(range(start, stop))
            if changes[start].op == "erase":  # an erasure's items and their edges: one transaction
                edges = [i for i in indices if isinstance(changes[i].record, Edge)]
                items = [i for i in indices if not isinstance(changes[i].record, Edge)]
                if edges and items:
                    batches.append(VersionBatch.concat([build(edges), build(items)], self.dim))
                    continue
            batches.append(build(indices))
        return batches

    def _locate(self, id: str, snap: _Snapshot) -> tuple[Any, int] | None:
        """(source, row) of the live version of ``id`` in ``snap``, or None."""
        mem = snap.mem
        row = mem.latest.get(id, -1)
        if row >= 0:
            cols = mem.cols
            while row >= 0 and cols.seq[row] > snap.seq:
                row = int(cols.prev_row[row])
            if row >= 0:
                return None if cols.flags[row] & FLAG_TOMBSTONE else (mem, row)
        if not isinstance(id, str):
            check_id(id)
        hi, lo = key_u64(id)
        for segment in reversed(snap.segments):
            row = segment.latest_row(hi, lo)
            if row >= 0:
                return None if segment.flags.item(row) & FLAG_TOMBSTONE else (segment, row)
        return None

    def _locate_live(self, ids: list[str], field: Callable[[int], str]) -> dict[str, tuple[Any, int]]:
        """(source, row) of the live version of each distinct id, in first-seen order (under the write lock);
        a missing one raises :class:`~t4dm.errors.UnknownId` naming ``field(i)``, ``i`` its first place."""
        distinct = list(dict.fromkeys(ids))
        located = dict(zip(distinct, self._locate_many(distinct, self._snap), strict=True))
        for id, found in located.items():
            if found is None:
                raise UnknownId(id, field(ids.index(id)))
        return located  # type: ignore[return-value]

    def _locate_many(self, keys: list[str], snap: _Snapshot) -> list[tuple[Any, int] | None]:
        """:meth:`_locate` for many ids: the memtable by its dict, then each segment, newest first, in one
        batched Bloom probe and binary search for every id still unresolved."""
        out: list[tuple[Any, int] | None] = [None] * len(keys)
        pending = []
        mem, cols = snap.mem, snap.mem.cols
        for position, key in enumerate(keys):
            row = mem.latest.get(key, -1)
            while row >= 0 and cols.seq[row] > snap.seq:
                row = int(cols.prev_row[row])
            if row >= 0:
                out[position] = None if cols.flags[row] & FLAG_TOMBSTONE else (mem, row)
            else:
                pending.append(position)
        if not pending or not snap.segments:
            return out
        key_hi, key_lo = keys_of([keys[i] for i in pending])
        left = np.asarray(pending, dtype=np.int64)
        for segment in reversed(snap.segments):
            rows = segment.latest_rows(key_hi, key_lo)
            hit = rows >= 0
            if hit.any():
                for position, row in zip(left[hit].tolist(), rows[hit].tolist(), strict=True):
                    out[position] = None if segment.flags.item(row) & FLAG_TOMBSTONE else (segment, row)
                left, key_hi, key_lo = left[~hit], key_hi[~hit], key_lo[~hit]
                if not left.size:
                    break
        return out

    def _versions(self, id: str, snap: _Snapshot) -> Iterator[tuple[Any, int]]:
        """Every version of ``id`` visible in ``snap``, newest first (tombstones included)."""
        mem = snap.mem
        row = mem.latest.get(id, -1)
        cols = mem.cols
        while row >= 0:
            if cols.seq[row] <= snap.seq:
                yield mem, row
            row = int(cols.prev_row[row])
        hi, lo = key_u64(id)
        for segment in reversed(snap.segments):
            start, end = segment.key_rows(hi, lo)
            for r in range(end - 1, start - 1, -1):
                yield segment, r

    def _item(self, source: Any, row: int, snap_seq: int, id: str | None = None) -> Item:
        """Version ``row`` of ``source`` as an Item (its own copy of the vector); ``id`` if known."""
        superseded = source.superseded_at.item(row) if source.next_seq.item(row) <= snap_seq else OPEN
        return Item(
            np.array(source.vectors[source.vector_row.item(row)]),
            source.id_at(row) if id is None else id,
            source.kappa.item(row),
            source.kinds[source.kind.item(row)],
            unpack(source.fields_bytes(row)),
            from_us(source.valid_from.item(row)),
            from_us(source.valid_to.item(row)),
            from_us(source.recorded_at.item(row)),
            from_us(superseded),
        )

    @staticmethod
    def _items(
        source: Any,
        rows: np.ndarray,
        snap_seq: int,
        payloads: list[bytes] | None = None,
        ids: list[str] | None = None,
    ) -> list[Item]:
        """:meth:`_item` for many rows at once: columns gathered once, vectors in one copy."""
        vectors = source.vectors[source.vector_row[rows]]
        kinds = source.kinds
        superseded = np.where(source.next_seq[rows] <= np.uint64(snap_seq), source.superseded_at[rows], OPEN)
        if payloads is None:
            payloads = source.fields_bytes_at(rows)
        return [
            Item(
                vector,
                id,
                kappa,
                kinds[kind],
                unpack(raw),
                from_us(vf),
                from_us(vt),
                from_us(rec),
                from_us(sup),
            )
            for vector, id, kappa, kind, raw, vf, vt, rec, sup in zip(
                vectors,
                source.ids_at(rows) if ids is None else ids,
                source.kappa[rows].tolist(),
                source.kind[rows].tolist(),
                payloads,
                source.valid_from[rows].tolist(),
                source.valid_to[rows].tolist(),
                source.recorded_at[rows].tolist(),
                superseded.tolist(),
                strict=True,
            )
        ]

    def scan(
        self,
        *,
        kappa: tuple[float, float] | None = None,
        kind: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        valid_at: datetime | None = None,
        known_at: datetime | None = None,
        valid_from: tuple[datetime, datetime] | None = None,
        limit: int | None = None,
        history: bool = False,
    ) -> Iterator[Item]:
        """SCAN items matching every filter given, in no particular order.

        Args:
            kappa: ``(lo, hi)``, inclusive; answered from each segment's κ index.
            kind: one kind or several.
            where: field equality, e.g. ``{"user_id": "u1"}`` (``user_id``, ``agent_id`` and ``run_id``
                are indexed columns; other fields are checked on the decoded payload).
            valid_at: items true in the world at this time (``valid_from <= t < valid_to``).
            known_at: the versions the store held at this transaction time, instead of the live ones.
            valid_from: ``(start, end)``: items whose ``valid_from`` is in ``[start, end)`` (e.g. the
                last 30 days); answered from each segment's valid-time index.
            limit: stop after this many items.
            history: every version the store holds that matches (superseded ones, and those of deleted
                ids; not tombstones), each with its ``recorded_at`` / ``superseded_at``, instead of the live
                ones; not with ``known_at``. What a full compaction dropped (expired history, erased ids) is
                not held any more.
        """
        self._check_open()
        f = parse_filter(kappa, kind, where, valid_at, known_at, valid_from, history)
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0
        ):
            raise InvalidInput("limit", limit, "expected an integer >= 0")
        return self._scan(self._snap, f, limit)

    def _scan(self, snap: _Snapshot, f: Filter, limit: int | None) -> Iterator[Item]:
        remaining = limit
        for source, n in _sources(snap):
            rows, payload_checks = match_rows(source, n, snap.seq, f)
            for start in range(0, rows.size, _SCAN_CHUNK):
                if remaining is not None and remaining <= 0:
                    return
                chunk = check_payloads(source, rows[start : start + _SCAN_CHUNK], payload_checks)
                if remaining is not None:
                    chunk = chunk[:remaining]
                    remaining -= chunk.size
                yield from self._items(source, chunk, snap.seq)

    def count(
        self,
        *,
        kappa: tuple[float, float] | None = None,
        kind: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        valid_at: datetime | None = None,
        known_at: datetime | None = None,
        valid_from: tuple[datetime, datetime] | None = None,
        history: bool = False,
    ) -> int:
        """Number of items :meth:`scan` would yield with these filters (no item is built)."""
        self._check_open()
        f = parse_filter(kappa, kind, where, valid_at, known_at, valid_from, history)
        snap = self._snap
        total = 0
        for source, n in _sources(snap):
            rows, payload_checks = match_rows(source, n, snap.seq, f)
            total += int(check_payloads(source, rows, payload_checks).size)
        return total

    def __len__(self) -> int:
        """Number of live items."""
        return self.count()

    def search(
        self,
        vector: Any,
        k: int = 10,
        *,
        kappa: tuple[float, float] | None = None,
        kind: str | Iterable[str] | None = None,
        where: Mapping[str, Any] | None = None,
        valid_at: datetime | None = None,
        known_at: datetime | None = None,
        valid_from: tuple[datetime, datetime] | None = None,
        ef: int | None = None,
        exact: bool = False,
    ) -> list[Hit]:
        """SEARCH: the ``k`` items most similar (cosine) to ``vector`` that pass every filter, best first.

        The filters are those of :meth:`scan`, applied inside the search: a segment's matching rows
        become an ID selector for its HNSW index, or, when few rows match, are scored exactly, so a
        selective filter never loses recall. ``ef`` overrides the HNSW ``efSearch``; ``exact=True``
        scores every matching row (the reference the approximate search is tested against).
        """
        self._check_open()
        query = self._check_vector(vector, "vector")
        norm = float(np.linalg.norm(query))
        if norm == 0.0:
            raise InvalidVector("vector", "<zero vector>", "a zero vector has no direction to search by")
        query /= norm
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise InvalidInput("k", k, "expected an integer >= 1")
        if ef is not None and (isinstance(ef, bool) or not isinstance(ef, numbers.Integral) or ef < 1):
            raise InvalidInput("ef", ef, "expected an integer >= 1")
        f = parse_filter(kappa, kind, where, valid_at, known_at, valid_from)
        snap = self._snap
        ef = self._hnsw.ef_search if ef is None else int(ef)
        found: list[tuple[np.ndarray, np.ndarray, Any]] = []
        for source, n in _sources(snap):
            if n == 0:
                continue
            labels, all_live = None, False
            if f.empty and isinstance(source, Segment):
                rows, labels = live_rows(source, snap.seq)
                all_live, checks = labels is None, []
            else:
                rows, checks = match_rows(source, n, snap.seq, f)
            rows = check_payloads(source, rows, checks)
            if rows.size:
                scores, hits = search_source(
                    source, rows, query, int(k), ef, exact, self._hnsw.min_rows, labels, all_live
                )
                found.append((scores, hits, source))
        if not found:
            return []
        scores = np.concatenate([s for s, _, _ in found])
        owner = np.concatenate([np.full(len(s), i) for i, (s, _, _) in enumerate(found)])
        rows = np.concatenate([r for _, r, _ in found])
        best = np.argsort(-scores, kind="stable")[: int(k)]
        hits: list[Hit | None] = [None] * len(best)
        for i, (_, _, source) in enumerate(found):
            mine = np.flatnonzero(owner[best] == i)
            if mine.size:
                chosen = rows[best[mine]]
                ids = source.ids_at(chosen)
                load = _LazyItems(source, chosen, snap.seq, ids)  # items built when one is first read
                for j, (place, id) in enumerate(zip(mine.tolist(), ids, strict=True)):
                    score = min(1.0, max(-1.0, float(scores[best[place]])))  # float32 rounding
                    hits[place] = Hit(id, score, load=load, index=j)
        return hits  # type: ignore[return-value]

    # ================================================================== flush and compaction
    @_writes
    def flush(self) -> None:
        """Write the memtable to a new segment (and compact if there are now too many)."""
        self._check_open()
        with self._write_lock:
            self._check_open()
            self._flush_locked()

    def _flush_locked(self, auto_compact: bool = True) -> None:
        mem = self._mem
        if mem.n == 0:
            return
        source = _FrozenMemtable(mem, mem.n)
        order = np.lexsort((source.seq, source.key_lo, source.key_hi))
        # Vectors stay in arrival order (no gather) unless rows without a vector (tombstones, edges)
        # would leave orphans among them.
        items_only = not (source.flags & NOT_ITEM).any()
        rows = assemble([source], np.zeros(mem.n, dtype=np.int32), order, base=0 if items_only else None)
        # The memtable holds the newest rows, so its version links are all within itself.
        segment = self._write_rows(rows)
        wal_number = self._wal.number + 1
        self._wal.rotate(wal_number)
        # every write so far is in the segment (rows) or the manifest (scales): the WAL before it goes
        self._install(
            removed=(), added=segment, index=len(self._segments), wal_start=wal_number, last_seq=self._seq
        )
        self._schedule_index(segment)
        self._mem = Memtable(self.dim, self._memtable_rows)
        self._publish()
        if auto_compact and len(self._segments) > self._max_segments:
            self._auto_compact()

    def _write_rows(self, rows: SegmentRows, writer: SegmentWriter | None = None) -> Segment:
        """Write ``rows`` as the next segment (its vectors through ``writer`` if one was started)."""
        seg_dir = os.path.join(self.path, _SEGMENTS)
        segment_id = self._manifest.next_segment_id
        self._manifest.next_segment_id += 1
        path = segment_path(seg_dir, segment_id)
        write_segment(
            path, writer=writer, dim=self.dim, columns=rows.columns, tags=rows.tags,
            vectors=None if writer is not None else rows.vector_chunks(),
            ids=rows.ids, payloads=rows.payloads, kinds=rows.kinds, tag_values=rows.tag_values,
            bloom_fp_rate=self._bloom_fp_rate, n_vectors=rows.n_vectors,
        )  # fmt: skip
        return Segment(path, segment_id, self.dim, verify=False)

    def _install(
        self,
        removed: tuple[Segment, ...],
        added: Segment | None,
        index: int,
        wal_start: int | None = None,
        last_seq: int | None = None,
    ) -> None:
        """Publish a manifest with ``removed`` replaced by ``added`` at ``index``, then drop old files.
        ``last_seq``: every write up to it is in the segments or the manifest (recovery skips it in the
        WAL)."""
        segments = [s for s in self._segments if s not in removed]
        if added is not None:
            segments.insert(index, added)
        manifest = self._manifest
        manifest.segments = [SegmentEntry(s.id, s.n, s.min_seq, s.max_seq, s.nbytes) for s in segments]
        if wal_start is not None:
            manifest.wal_start = wal_start
        manifest.last_seq = max(
            manifest.last_seq, last_seq or 0, max((s.max_seq for s in segments), default=0)
        )
        manifest.last_recorded = max(manifest.last_recorded, self._last_recorded)
        # the scales recovery will not replay from the WAL (all of them unless a compaction ran after a
        # scale with no flush between: that one is still in the WAL)
        durable = [entry for entry in self._scale_log if entry[0] <= manifest.last_seq]
        scales = dict(self._scale_base)
        for _, _, rel, factor in durable:
            scales = _with_scale(scales, rel, factor)
        manifest.edge_scales = scales
        manifest.edge_scale_log = [list(entry) for entry in durable]
        manifest.edge_scale_base = dict(self._scale_base)
        manifest.folded_through = self._folded_through
        manifest.publish(self.path)
        self._segments = tuple(segments)
        wal_dir = os.path.join(self.path, _WAL)
        # Unlinking a 64 MB log costs ~50 ms: the janitor thread does it (recovery removes leftovers).
        for number in wal_files(wal_dir):
            if number < manifest.wal_start:
                self._janitor.submit(_unlink_quietly, os.path.join(wal_dir, f"{number:08d}.wal"))
        for segment in removed:
            self._janitor.submit(_unlink_quietly, segment.path)
            self._janitor.submit(_unlink_quietly, segment.index_path)

    @_writes
    def compact(self, policy: CompactionPolicy | None = None) -> CompactionStats:
        """Full compaction: flush, merge every segment into one, drop expired history and tombstones,
        and run the compaction policy (``policy`` or the store's). Readers are not blocked."""
        self._check_open()
        with self._write_lock:
            self._check_open()
            self._flush_locked(auto_compact=False)
            return self._compact_run(0, len(self._segments), policy or self._policy)

    def _auto_compact(self) -> None:
        while len(self._segments) > self._max_segments:
            width = len(self._segments) - self._max_segments + 1
            sizes = [s.nbytes for s in self._segments]
            start = min(range(len(sizes) - width + 1), key=lambda i: sum(sizes[i : i + width]))
            self._compact_run(start, start + width, self._policy)

    def _compact_run(self, start: int, stop: int, policy: CompactionPolicy | None) -> CompactionStats:
        """Merge segments ``[start, stop)``. Only a full run (every segment, the memtable empty) drops
        expired history and tombstones and runs the policy: it alone sees every version of a key."""
        t0 = time.perf_counter()
        run = self._segments[start:stop]
        full = start == 0 and stop == len(self._segments)
        if not run:
            return CompactionStats(0, 0, 0, 0, 0, 0, 0.0, full)
        bytes_in = sum(s.nbytes for s in run)
        rows_in = sum(s.n for s in run)
        if len(run) == 1:
            src, row = np.zeros(run[0].n, dtype=np.int32), np.arange(run[0].n, dtype=np.int64)
        else:
            src, row = kway_merge(run)
        rows = assemble(run, src, row)
        added = 0
        folded = False
        if full and self._mem.n == 0:
            cutoff = None if self._retention_us is None else self._tick() - self._retention_us
            # Weight overlays and batch scales are folded into the edges (their weights in memory
            # already hold the overlays); then the overlay rows go.
            keep = drop_expired(rows, cutoff) & ((rows.columns["flags"] & FLAG_OVERLAY) == 0)
            keep &= ~_erased(rows.columns)  # ERASE: every row of an id up to its erasing tombstone
            # what the change feed loses: the dropped rows and the scales, as of when they were written
            lost = [int(rows.columns["recorded_at"][~keep].max())] if not keep.all() else []
            lost += [recorded for _, recorded, _, _ in self._scale_log]
            edges = (rows.columns["flags"] & FLAG_EDGE) != 0
            if self._scales and edges.any():
                factor = np.array([_scale_factor(self._scales, k) for k in rows.kinds])
                rows.columns["weight"] = np.where(
                    edges, rows.columns["weight"] * factor[rows.columns["kind"]], rows.columns["weight"]
                )
            folded = True
            rows = apply_keep(rows, keep)
            if policy is not None:
                rows, added, edited = self._run_policy(rows, policy)
                # rows dropped or old versions' κ changed: no follower has that, whenever it last read
                if edited:
                    lost.append(self._tick())
            self._folded_through = max([self._folded_through, *lost])
            version_chains(rows.columns)
            memory_links = None
        else:
            # Rows may be superseded by newer segments: keep those links in memory, write the run's own.
            memory_links = (rows.columns["next_seq"].copy(), rows.columns["superseded_at"].copy())
            version_chains(rows.columns)
        base = rows.base = self._index_base(run, rows)
        segment = self._write_rows(rows) if rows.n else None
        if memory_links is not None and segment is not None:
            segment.set_links(*memory_links)
        if folded:  # published with the manifest that names the folded segment
            self._scales, self._scale_base, self._scale_log = {}, {}, ()
        # A fold took in every write so far (the memtable is empty: what the WAL holds past the segments are
        # batch scales, now in the weights), so recovery must not apply those scales again
        self._install(removed=run, added=segment, index=start, last_seq=self._seq if folded else None)
        if segment is not None:
            self._schedule_index(segment, None if base is None else run[base])
        self._publish()
        return CompactionStats(
            segments_in=len(run), rows_in=rows_in, rows_out=rows.n, rows_added=added, bytes_in=bytes_in,
            bytes_out=segment.nbytes if segment else 0, seconds=time.perf_counter() - t0, full=full,
        )  # fmt: skip

    def _index_base(self, run: tuple[Segment, ...], rows: SegmentRows) -> int | None:
        """The input whose HNSW index the output can extend instead of rebuilding: the one with the
        most vectors, if it has an index and at least 80 % of its vectors stay in use (the rest stay
        as orphans, skipped by searches, until a later compaction rebuilds)."""
        with_index = [i for i, segment in enumerate(run) if segment.index is not None]
        if not with_index:
            return None
        best = max(with_index, key=lambda i: run[i].vectors.shape[0])
        used = int(np.count_nonzero(rows.src == best))
        return best if used >= 0.8 * run[best].vectors.shape[0] else None

    # ------------------------------------------------------------------ vector indexes
    def _schedule_index(self, segment: Segment, base: Segment | None = None) -> None:
        """Build ``segment``'s HNSW index (extending ``base``'s when given), now or in the background."""
        if segment.vectors.shape[0] < self._hnsw.min_rows:
            return
        base_index = None if base is None else base.index
        base_count = 0 if base is None else base.vectors.shape[0]
        if self._index_build == "sync":
            self._build_index(segment, base_index, base_count)
        else:
            self._index_jobs = [job for job in self._index_jobs if not job.done()]
            self._index_jobs.append(self._indexer.submit(self._build_index, segment, base_index, base_count))

    def _build_index(self, segment: Segment, base_index: Any, base_count: int) -> None:
        def stop() -> bool:
            return self._stopping or segment not in self._segments

        if stop():
            return
        if base_index is not None:
            # An owned copy: clone_index would share the memory-mapped vectors, which cannot grow.
            owned = faiss.deserialize_index(faiss.serialize_index(base_index))
            index = extend_hnsw(owned, segment.vectors[base_count:], self._hnsw, stop)
        else:
            index = build_hnsw(segment.vectors, self._hnsw, stop)
        if index is None or stop():
            return
        save_hnsw(index, segment.index_path)
        segment.index = load_hnsw(segment.index_path, segment.vectors.shape[0], self.dim)
        if segment not in self._segments:  # compacted away meanwhile
            _unlink_quietly(segment.index_path)

    def wait_indexed(self, timeout: float | None = None) -> bool:
        """Wait until every segment's HNSW index is built; False if ``timeout`` (seconds) ran out."""
        self._check_open()
        jobs = list(self._index_jobs)
        done, pending = wait(jobs, timeout=timeout)
        for job in done:
            job.result()  # re-raise a failed build here
        return not pending

    def _run_policy(self, rows: SegmentRows, policy: CompactionPolicy) -> tuple[SegmentRows, int, bool]:
        """``rows`` as the policy left them, the number of items it added, and whether it dropped any row or
        changed κ of a version that is not live (the change feed cannot give those).

        κ it changed on live items becomes κ overlay rows, recorded now, which the change feed gives; its new
        items and their provenance edges are two more transactions. Those rows are merged in against the
        compaction's own inputs (the merged rows' sources), so vectors stay where the inputs have them and
        the output can still extend an input's HNSW index.
        """
        view = MergedRows(rows, self._last_recorded)
        before = np.array(rows.columns["kappa"], dtype=np.float64, copy=True)
        policy(view)
        kappa = np.asarray(view.kappa, dtype=np.float64)
        if kappa.shape != (rows.n,) or np.isnan(kappa).any():
            raise InvalidInput(
                "MergedRows.kappa", "<edited by the policy>", "must stay float [n] without NaN"
            )
        keep = np.asarray(view.keep, dtype=np.bool_)
        if keep.shape != (rows.n,):
            raise InvalidInput("MergedRows.keep", f"<shape {keep.shape}>", f"must stay bool [{rows.n}]")
        c = rows.columns
        c["kappa"] = np.clip(kappa, 0.0, 1.0)
        moved = c["kappa"] != before
        feed = moved & keep & view.is_current & view.is_item  # live items' κ: overlays the feed gives
        groups = _key_groups(c) if not keep.all() else None  # shared by the two passes below
        forgotten, partial = _forgotten(keep, groups, c["flags"])  # ids the policy dropped whole (PRUNE)
        edited = bool(partial.any()) or bool((moved & keep & ~feed).any())
        overlays = np.flatnonzero(feed)
        overlay_ids = [view.ids[i] for i in overlays.tolist()]
        overlay_kappas = c["kappa"][overlays]
        erase = self._tombstones(
            [view.ids[i] for i in forgotten.tolist()], c["valid_from"][forgotten], c["valid_to"][forgotten],
            c["kappa"][forgotten], erase=True,
        )  # fmt: skip
        unlinked = self._policy_edge_erasures(rows, view, keep, forgotten, groups)  # their rows off ``keep``
        if unlinked is not None:  # the ids' edges go in the same transaction, as with erase()
            erase = VersionBatch.concat([unlinked, erase], self.dim)
        rows = apply_keep(rows, keep)
        extra: list[Any] = []
        for batch in (self._kappa_batch(overlay_ids, overlay_kappas), erase):
            if batch.n:  # each a transaction of its own, recorded now
                batch.seq_start, batch.recorded_at = self._seq + 1, self._tick()
                batch.valid_from = np.where(batch.valid_from == _FILL, batch.recorded_at, batch.valid_from)
                self._seq += batch.n
                extra.append(_BatchSource(batch))
        if view.added:
            extra += self._policy_items(view)
        if not extra:
            return rows, 0, edited
        return self._merge_rows(rows, extra), len(view.added), edited

    def _policy_edge_erasures(
        self,
        rows: SegmentRows,
        view: MergedRows,
        keep: np.ndarray,
        forgotten: np.ndarray,
        groups: tuple[np.ndarray, np.ndarray] | None,
    ) -> VersionBatch | None:
        """As :meth:`erase` does for its ids' edges, for the ids a policy dropped whole (rows ``forgotten``):
        every row of each edge leaving or reaching one is dropped (``keep`` edited), and an erasing
        tombstone per edge, a copy of its newest row, is returned for the change feed (None: no edge). Rows
        sorted by (key, seq), grouped by key (``groups``, from :func:`_key_groups`)."""
        if not forgotten.size or groups is None:
            return None
        c = rows.columns
        touching = edge_rows_touching(c, rows.n, c["key_hi"][forgotten], c["key_lo"][forgotten])
        if not touching.size:
            return None
        starts, group = groups
        last = np.append(starts[1:], rows.n) - 1
        newest = np.unique(last[group[touching]]).tolist()
        for r in newest:
            keep[starts[group[r]] : r + 1] = False
        return self._edge_tombstones([(view.ids[r], _ColumnsView(rows), r) for r in newest], erase=True)

    @staticmethod
    def _merge_rows(rows: SegmentRows, extra: list[Any]) -> SegmentRows:
        """``rows`` (assembled from the compaction's inputs) with the rows of ``extra`` sources merged in, in
        (key, seq) order, gathered again from the inputs; what the fold and the policy changed in ``rows``
        (weights, κ) is carried over."""
        sources = [*rows.sources, *extra]
        first = len(rows.sources)
        src = np.concatenate(
            [rows.src, *(np.full(e.n, first + i, dtype=np.int32) for i, e in enumerate(extra))]
        )
        row = np.concatenate([rows.row, *(np.arange(e.n, dtype=np.int64) for e in extra)])
        order = np.lexsort(
            tuple(
                np.concatenate([rows.columns[name], *(getattr(e, name) for e in extra)])
                for name in ("seq", "key_lo", "key_hi")
            )
        )
        out = assemble(sources, src[order].astype(np.int32), row[order])
        kept = np.flatnonzero(order < rows.n)  # where the merged rows went
        for name in ("kappa", "weight"):
            out.columns[name][kept] = rows.columns[name][order[kept]]
        return out

    def _policy_items(self, view: MergedRows) -> list[Any]:
        """The items a compaction policy added, and their provenance edges, as row sources (two transactions,
        recorded now)."""
        batch = self._batch_from_items(list(view.added), field_prefix="added")
        batch.seq_start = self._seq + 1
        batch.recorded_at = self._tick()
        batch.valid_from = np.where(batch.valid_from == _FILL, batch.recorded_at, batch.valid_from)
        if (batch.valid_to <= batch.valid_from).any():
            raise InvalidTime("added.valid_to", "<policy item>", "must be after valid_from")
        self._seq += batch.n
        sources: list[Any] = [_BatchSource(batch)]
        links = [
            (id, source) for id, derived in zip(batch.ids, view.provenance, strict=True) for source in derived
        ]
        if links:
            for i, (_, source) in enumerate(links):
                check_id(source, f"derived_from[{i}]")
            n = len(links)
            edges = self._edge_batch(
                [id for id, _ in links], [source for _, source in links], [PROVENANCE] * n, np.ones(n),
                np.full(n, batch.recorded_at, dtype=np.int64), np.full(n, OPEN, dtype=np.int64),
                scales={},  # the full compaction folds the scales in force: after it there are none
            )  # fmt: skip
            # a transaction of their own (one sort of change per transaction, so that replay can copy it)
            edges.seq_start, edges.recorded_at = self._seq + 1, self._tick()
            self._seq += n
            sources.append(_BatchSource(edges))
        return sources

    # ================================================================== graph
    @_writes
    def add_edges(self, edges: Edge | Iterable[Edge], *, check_endpoints: bool = True) -> None:
        """Add edges (one transaction). An edge ``(src, rel, dst)`` that exists gets a new version.

        ``weight`` must be finite; both endpoints must be live items (:class:`~t4dm.errors.UnknownId`
        otherwise) unless ``check_endpoints=False`` (a bulk load that knows better). Nothing is written
        if any edge is bad.
        """
        self._check_open()
        edges = [edges] if isinstance(edges, Edge) else list(edges)
        for i, edge in enumerate(edges):
            if not isinstance(edge, Edge):
                raise InvalidInput(f"edges[{i}]", edge, "expected an Edge")
        if not edges:
            return
        self.add_edges_batch(
            [e.src for e in edges], [e.dst for e in edges], [e.rel for e in edges], [e.weight for e in edges],
            valid_from=[e.valid_from for e in edges], valid_to=[e.valid_to for e in edges],
            check_endpoints=check_endpoints, _records=edges,
        )  # fmt: skip

    @_writes
    def add_edges_batch(
        self,
        src: Sequence[str],
        dst: Sequence[str],
        rel: str | Sequence[str] = "related",
        weight: float | Sequence[float] | np.ndarray = 1.0,
        *,
        valid_from: datetime | Sequence[datetime | None] | None = None,
        valid_to: datetime | Sequence[datetime | None] | None = None,
        check_endpoints: bool = True,
        _records: list[Edge] | None = None,
    ) -> None:
        """:meth:`add_edges` given as columns: ``src`` and ``dst`` ids, one relation or one per edge, one
        weight or one per edge."""
        self._check_open()
        field = "edges[{}].{}" if _records is not None else "{1}[{0}]"
        src_ids, dst_ids, rels, weights, vf, vt = self._edge_columns(
            src, dst, rel, weight, valid_from, valid_to, field.format
        )
        n = len(src_ids)
        if n == 0:
            return
        with self._write_lock:
            self._check_open()
            if check_endpoints:
                snap = self._snap
                for name, column in (("src", src_ids), ("dst", dst_ids)):
                    for i, id in enumerate(column):
                        if self._locate(id, snap) is None:
                            raise UnknownId(id, field.format(i, name))
            self._commit(self._edge_batch(src_ids, dst_ids, rels, weights, vf, vt))

    def _edge_columns(
        self,
        src: Sequence[str],
        dst: Sequence[str],
        rel: str | Sequence[str],
        weight: float | Sequence[float] | np.ndarray,
        valid_from: datetime | Sequence[datetime | None] | None,
        valid_to: datetime | Sequence[datetime | None] | None,
        field: Callable[[int, str], str],
    ) -> tuple[list[str], list[str], list[str], np.ndarray, np.ndarray, np.ndarray]:
        """The checked columns of edges; ``field(i, name)`` names field ``name`` of row ``i`` in errors."""
        n = len(src)
        if len(dst) != n:
            raise InvalidInput("dst", f"<{len(dst)} ids>", f"expected {n} (one per src)")
        src_ids = [check_id(v, field(i, "src")) for i, v in enumerate(src)]
        dst_ids = [check_id(v, field(i, "dst")) for i, v in enumerate(dst)]
        rels = [rel] * n if isinstance(rel, str) else list(rel)
        if len(rels) != n:
            raise InvalidInput("rel", f"<{len(rels)} relations>", f"expected one or {n}")
        for i, r in enumerate(rels):
            if not isinstance(r, str) or not r or len(r) > 255 or EDGE_SEPARATOR in r:
                raise InvalidInput(field(i, "rel"), r, "a relation is a non-empty string (≤ 255 chars)")
        weights = (
            np.broadcast_to(np.asarray(weight, dtype=np.float64), (n,))
            if np.ndim(weight) == 0
            else np.asarray(weight, dtype=np.float64)
        )
        if weights.shape != (n,):
            raise InvalidInput("weight", f"<shape {weights.shape}>", f"expected one number or {n}")
        bad = np.flatnonzero(~np.isfinite(weights))
        if bad.size:
            raise InvalidInput(field(int(bad[0]), "weight"), float(weights[bad[0]]), "weights must be finite")
        vf = self._time_column(valid_from, n, "valid_from", _FILL)
        vt = self._time_column(valid_to, n, "valid_to", OPEN)
        return src_ids, dst_ids, rels, weights, vf, vt

    def _edge_batch(
        self,
        src_ids: list[str],
        dst_ids: list[str],
        rels: list[str],
        weights: np.ndarray,
        vf: np.ndarray,
        vt: np.ndarray,
        scales: dict[str, float] | None = None,
    ) -> VersionBatch:
        """Edge rows for validated columns; weights are stored divided by the batch scales (``scales``, by
        default the current ones)."""
        n = len(src_ids)
        src_hi, src_lo = keys_of(src_ids)
        dst_hi, dst_lo = keys_of(dst_ids)
        ids = [edge_id(s_, r, d) for s_, r, d in zip(src_ids, rels, dst_ids, strict=True)]
        key_hi, key_lo = keys_of(ids)
        scales = self._scales if scales is None else scales
        stored = weights / np.array([_scale_factor(scales, r) for r in rels])
        batch = self._build_batch(
            ids,
            key_hi,
            key_lo,
            np.empty((n, 0), np.float32),
            np.zeros(n),
            rels,
            [{}] * n,
            vf,
            vt,
            False,
            "edges",
        )
        batch.flags[:] = FLAG_EDGE
        batch.src_hi, batch.src_lo, batch.dst_hi, batch.dst_lo = src_hi, src_lo, dst_hi, dst_lo
        batch.weight = np.ascontiguousarray(stored)
        return batch

    @_writes
    def remove_edges(self, src: str, dst: str, rel: str = "related") -> None:
        """End edge ``src -rel-> dst`` (a tombstone version); it stays visible to ``known_at`` before now."""
        self._check_open()
        id = edge_id(check_id(src, "src"), rel, check_id(dst, "dst"))
        with self._write_lock:
            found = self._locate(id, self._snap)
            if found is None:
                raise UnknownId(id, "edge")
            self._commit(self._edge_tombstones([(id, *found)]))  # type: ignore[arg-type]

    @_writes
    def update_edge_weight(
        self,
        src: str,
        dst: str,
        rel: str = "related",
        *,
        delta: float | None = None,
        weight: float | None = None,
    ) -> float:
        """UPDATE_EDGE_WEIGHT: add ``delta`` to (or set ``weight`` of) edge ``src -rel-> dst``.

        An O(1) overlay record (Hebbian Δw, STDP), not a new version: it is folded into the edge at the
        next full compaction. Returns the new effective weight.
        """
        if (delta is None) == (weight is None):
            raise InvalidInput("delta", delta, "give exactly one of delta= and weight=")
        if delta is not None:
            return self.update_edge_weights([(src, dst, rel, delta)])[0]
        return self.update_edge_weights([(src, dst, rel, weight)], absolute=True)[0]

    @_writes
    def update_edge_weights(
        self, updates: Iterable[tuple[str, str, str, float]], *, absolute: bool = False
    ) -> list[float]:
        """UPDATE_EDGE_WEIGHT for many edges in one transaction: ``(src, dst, rel, delta)`` tuples (or
        ``(src, dst, rel, weight)`` with ``absolute=True``); an edge may appear more than once (its deltas add up).

        Every edge is checked before anything is written: a bad value or an unknown edge raises and writes
        nothing. Returns the new effective weights, one per update, in order.
        """
        self._check_open()
        name = "weight" if absolute else "delta"
        checked = []
        for i, update in enumerate(updates):
            if not isinstance(update, tuple | list) or len(update) != 4:
                raise InvalidInput(f"updates[{i}]", update, "expected a (src, dst, rel, value) tuple")
            src, dst, rel, value = update
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InvalidInput(name, value, "expected a finite number")
            if not isinstance(rel, str) or not rel:
                raise InvalidInput("rel", rel, "expected a relation name")
            src, dst = check_id(src, "src"), check_id(dst, "dst")
            checked.append((edge_id(src, rel, dst), rel, float(value), src, dst))
        if not checked:
            return []
        with self._write_lock:
            self._check_open()
            located = self._locate_live([id for id, *_ in checked], lambda i: "edge")
            stored_now = {id: float(source.weight[row]) for id, (source, row) in located.items()}
            effective, ends = [], {}
            for id, rel, value, src, dst in checked:
                scale = _scale_factor(self._scales, rel)
                stored_now[id] = value / scale if absolute else stored_now[id] + value / scale
                effective.append(stored_now[id] * scale)
                ends[id] = (src, dst, rel)
            edges = list(ends)  # one overlay row per edge: its final stored weight, its version's valid time
            rows = [located[id] for id in edges]
            batch = self._edge_batch(
                [ends[id][0] for id in edges], [ends[id][1] for id in edges], [ends[id][2] for id in edges],
                np.array([stored_now[id] for id in edges]),
                np.array([source.valid_from[row] for source, row in rows]),
                np.array([source.valid_to[row] for source, row in rows]),
                scales={},  # the weights are stored values already
            )  # fmt: skip
            self._commit(self._overlay_batch(batch))
            return effective

    @_writes
    def batch_scale_weights(
        self, factor: float, rel: str | None = None, where: Mapping[str, Any] | None = None
    ) -> None:
        """BATCH_SCALE_WEIGHTS: multiply the weight of every edge (of relation ``rel``) by ``factor``.

        Without ``where``: O(1), a factor recorded once and applied when weights are read (decay); full
        compactions fold it into the edges. With ``where`` (field equality, as in :meth:`scan`): only the
        edges leaving the live items that match, each rewritten by one weight overlay in a single
        transaction (O(matching items + their edges)); edges added later are not scaled.
        """
        self._check_open()
        scale, _ = self._scale_batch(factor, rel)
        if where is not None:
            f = parse_filter(None, None, where, None, None, None)
            with self._write_lock:  # re-entrant: the read and the overlays see no write in between
                self._check_open()
                sources = [item.id for item in self._scan(self._snap, f, None)]
                if not sources:
                    return
                edges = self.edges(sources, direction="out", rel=rel)
                if edges:
                    self.update_edge_weights(
                        [(e.src, e.dst, e.rel, e.weight * float(factor)) for e in edges], absolute=True
                    )
            return
        with self._write_lock:
            self._check_open()
            self._commit(scale)

    def _scale_batch(self, factor: Any, rel: Any, where: str = "") -> tuple[VersionBatch, str]:
        """The one-row batch of a checked BATCH_SCALE_WEIGHTS, and its key (``rel``, or "*" for every one)."""
        if (
            isinstance(factor, bool)
            or not isinstance(factor, numbers.Real)
            or not (math.isfinite(factor) and factor > 0)
        ):
            raise InvalidInput(f"{where}factor", factor, "expected a finite number > 0")
        if rel is not None and (not isinstance(rel, str) or not rel or rel == "*"):
            raise InvalidInput(f"{where}rel", rel, "expected a relation name or None")
        key = "*" if rel is None else rel
        batch = self._build_batch(
            [_SCALE_ID], *keys_of([_SCALE_ID]), np.empty((1, 0), np.float32), np.zeros(1), [key], [{}],
            np.array([_FILL]), np.array([OPEN]), False, "",
        )  # fmt: skip
        batch.flags[:] = FLAG_SCALE
        batch.weight[0] = float(factor)
        return batch, key

    @staticmethod
    def _overlay_batch(edges: VersionBatch) -> VersionBatch:
        """``edges`` (rows of edges, weights stored) as weight overlays: rows of their own version chains
        (id + suffix) that set each edge's stored weight when applied."""
        ids = [id + _OVERLAY_SUFFIX for id in edges.ids]
        key_hi, key_lo = keys_of(ids)
        flags = np.full_like(edges.flags, FLAG_EDGE | FLAG_OVERLAY)
        return dataclasses.replace(edges, ids=ids, key_hi=key_hi, key_lo=key_lo, flags=flags)

    def _kappa_batch(self, ids: list[str], kappas: np.ndarray) -> VersionBatch:
        """κ overlays of items ``ids``: rows of their own version chains (reserved prefix + item id) that set
        κ of each item's live version when applied."""
        n = len(ids)
        keyed = [_KAPPA_PREFIX + id for id in ids]
        batch = self._build_batch(
            keyed, *keys_of(keyed), np.empty((n, 0), np.float32), np.asarray(kappas, dtype=np.float64), _KAPPA_KIND,
            [{}] * n, np.full(n, _FILL, dtype=np.int64), np.full(n, OPEN, dtype=np.int64), False, "",
        )  # fmt: skip
        batch.flags[:] = FLAG_OVERLAY
        return batch

    def _set_weight(self, edge: str, stored: float, seq: int) -> None:
        """Apply a weight overlay (stored, unscaled value) to the version of ``edge`` live before ``seq``."""
        snap = self._snap
        for source, row in self._versions(edge, snap):
            if source.seq[row] < seq:
                if not source.flags[row] & (FLAG_TOMBSTONE | FLAG_OVERLAY):
                    source.weight[row] = stored
                return

    def _apply_segment_overlays(self) -> None:
        """At open: re-apply the weight and κ overlays stored in segments, oldest first."""
        weights, kappas = [], []
        for segment in self._segments:
            for row in np.flatnonzero(segment.flags & FLAG_OVERLAY).tolist():
                if segment.flags[row] & FLAG_EDGE:
                    weights.append(
                        (int(segment.seq[row]), segment.id_at(row)[:-1], float(segment.weight[row]))
                    )
                else:
                    id = segment.id_at(row)[len(_KAPPA_PREFIX) :]
                    kappas.append((int(segment.seq[row]), id, float(segment.kappa[row])))
        for seq, edge, stored in sorted(weights):
            self._set_weight(edge, stored, seq)
        # each on the version of its item live before it (a deleted item's is left alone), oldest first
        snap, targets = self._snap, []
        for seq, item, kappa in sorted(kappas):
            for source, row in self._versions(item, snap):
                if source.seq[row] < seq:
                    if not source.flags[row] & FLAG_TOMBSTONE:
                        targets.append((source, row, kappa))
                    break
        self._set_kappas(targets)

    def _set_kappas(self, targets: list[tuple[Any, int, float]]) -> None:
        """Set κ of rows ``(source, row, κ)``, in order (a row set twice keeps its last value); segments'
        rows through :meth:`Segment.set_kappa`, which keeps their κ index right."""
        by_source: dict[int, tuple[Any, dict[int, float]]] = {}  # per source: row -> its last value
        for source, row, kappa in targets:
            by_source.setdefault(id(source), (source, {}))[1][row] = kappa
        for source, values in by_source.values():
            rows, kappas = np.array(list(values), dtype=np.int64), np.array(list(values.values()))
            if isinstance(source, Segment):
                source.set_kappa(rows, kappas)
            else:
                source.kappa[rows] = kappas

    def edges(
        self,
        id: str | Iterable[str],
        *,
        direction: str = "out",
        rel: str | Iterable[str] | None = None,
        known_at: datetime | None = None,
        valid_at: datetime | None = None,
    ) -> list[Edge]:
        """The edges leaving (``direction="out"``) or reaching (``"in"``) item ``id``, or any of several
        ids (one pass over the adjacency for all of them)."""
        ids, plan = self._edge_plan(id, direction, rel, known_at, valid_at)
        return neighbour_edges(plan, ids) if ids else []

    def neighbours(
        self,
        id: str | Iterable[str],
        *,
        direction: str = "out",
        rel: str | Iterable[str] | None = None,
        known_at: datetime | None = None,
        valid_at: datetime | None = None,
    ) -> list[tuple[str, str]]:
        """``(id, neighbour)`` for each edge that :meth:`edges` would return (the same filters and
        visibility), without building the :class:`Edge` records: several times cheaper when only the
        ids are wanted. ``id`` is the near end (the source when ``direction="out"``)."""
        ids, plan = self._edge_plan(id, direction, rel, known_at, valid_at)
        return neighbour_pairs(plan, ids, direction) if ids else []

    def _edge_plan(
        self,
        id: str | Iterable[str],
        direction: str,
        rel: str | Iterable[str] | None,
        known_at: datetime | None,
        valid_at: datetime | None,
    ) -> tuple[list[str], Any]:
        """The checked ids and the one-hop plan over this snapshot shared by :meth:`edges` and
        :meth:`neighbours`."""
        self._check_open()
        ids = [check_id(id)] if isinstance(id, str) else [check_id(x, f"id[{i}]") for i, x in enumerate(id)]
        snap = self._snap
        return ids, graph_plan(_sources(snap), snap, direction, rel, -math.inf, known_at, valid_at)

    def traverse(
        self,
        seeds: str | Iterable[str],
        depth: int = 2,
        *,
        rel: str | Iterable[str] | None = None,
        min_weight: float = -math.inf,
        direction: str = "out",
        known_at: datetime | None = None,
        valid_at: datetime | None = None,
        with_weights: bool = False,
    ) -> Reached:
        """TRAVERSE: breadth-first from ``seeds`` along visible edges, up to ``depth`` hops.

        Returns a read-only mapping ``{id: hops}`` of every item reached (seeds at 0), or
        ``{id: (hops, weight)}`` with ``with_weights`` (the largest effective weight of an edge that reached
        it; seeds have inf). It names nodes lazily: ``len``, ``in`` and ``[id]`` are hash probes, iteration
        names them all once; ``.hops`` / ``.weights`` / ``.keys_u64()`` give the arrays (see
        :class:`~t4dm.storage.graph.Reached`). Edges
        are followed when their relation is in ``rel`` (None: all), their effective weight is at least
        ``min_weight``, they are valid at ``valid_at`` (if given) and live now or, with ``known_at``,
        known then. ``direction="in"`` walks edges backwards.
        """
        self._check_open()
        seed_ids = [seeds] if isinstance(seeds, str) else list(seeds)
        seed_ids = [check_id(s, f"seeds[{i}]") for i, s in enumerate(seed_ids)]
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
            raise InvalidInput("depth", depth, "expected an integer >= 0")
        if isinstance(min_weight, bool) or not isinstance(min_weight, numbers.Real) or math.isnan(min_weight):
            raise InvalidInput("min_weight", min_weight, "expected a number")
        snap = self._snap
        plan = graph_plan(
            _sources(snap), snap, direction, rel, float(min_weight), known_at, valid_at, with_weights
        )
        return breadth_first(plan, seed_ids, int(depth), with_weights=with_weights)

    def derived_from(self, id: str, *, known_at: datetime | None = None) -> list[str]:
        """Provenance backwards: the ids ``id`` was derived from (its ``derived_from`` edges)."""
        return [e.dst for e in self.edges(id, direction="out", rel=PROVENANCE, known_at=known_at)]

    def derivatives(self, id: str | Iterable[str], *, known_at: datetime | None = None) -> list[str]:
        """Provenance forwards: the ids derived from ``id`` (or from any of several ids)."""
        return [e.src for e in self.edges(id, direction="in", rel=PROVENANCE, known_at=known_at)]

    @_writes
    def add_provenance(self, id: str, sources: Iterable[str], *, check_endpoints: bool = True) -> None:
        """Record that item ``id`` was derived from ``sources`` (``derived_from`` edges, id -> source);
        ``check_endpoints`` as in :meth:`add_edges` (False: ``id`` may be written after its provenance)."""
        self.add_edges([Edge(id, source, PROVENANCE) for source in sources], check_endpoints=check_endpoints)

    # ================================================================== introspection
    def stats(self) -> dict[str, Any]:
        """Counts and sizes: live items, version rows, segments, memtable, bytes on disk; the batch scales in
        force (by relation, "*" for all) and how many are not yet folded into the edges; ``folded_through``
        (ISO time or None: see :meth:`changes`); ``pending_erasures``: erasing tombstones (items and edges)
        whose ids' past is still in the files, until the next full compaction; ``read_only``;
        ``last_recorded``: the time of the last write it holds (a reader's against the writer's: its lag)."""
        self._check_open()
        snap = self._snap
        erasing = np.uint8(FLAG_TOMBSTONE | FLAG_ERASE)
        pending = sum(
            int(np.count_nonzero((source.flags[:n] & erasing) == erasing)) for source, n in _sources(snap)
        )
        return {
            "dim": self.dim,
            "live_items": len(self),
            "memtable_rows": snap.mem_n,
            "segments": len(snap.segments),
            "segment_rows": sum(s.n for s in snap.segments),
            "segment_bytes": sum(s.nbytes for s in snap.segments),
            "last_seq": snap.seq,
            "durability": self.durability,
            "edge_scales": dict(snap.scales),
            "unfolded_scales": len(snap.scale_log),
            "folded_through": from_us(snap.folded_through).isoformat() if snap.folded_through else None,
            "pending_erasures": pending,
            "read_only": self._read_only,
            "last_recorded": None if self.last_recorded is None else self.last_recorded.isoformat(),
        }


# ---------------------------------------------------------------------- helpers
_MISSING = object()


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _field(prefix: str | list[str], i: int, name: str) -> str:
    """The name of field ``name`` of row ``i`` in an error: ``prefix[i].name``, or ``prefix[i].name`` taken
    from a list of per-row names (a replay names rows by their place in the changes)."""
    if isinstance(prefix, list):
        return f"{prefix[i]}.{name}"
    return f"{prefix}[{i}].{name}" if prefix else name


def _scale_factor(scales: Mapping[str, float], rel: str) -> float:
    """The batch-scale factor of relation ``rel``: every relation's ("*") times its own."""
    return scales.get("*", 1.0) * scales.get(rel, 1.0)


def _with_scale(scales: Mapping[str, float], key: str, factor: float) -> dict[str, float]:
    """``scales`` after one more BATCH_SCALE_WEIGHTS of ``factor`` on ``key`` (a relation or "*")."""
    return {**scales, key: scales.get(key, 1.0) * factor}


class _ScaleHistory:
    """The batch-scale factor in force before a write: ``base`` (factors older than the log) times the
    log's factors written before it, for every relation ("*") and for the write's own. With no scale after
    the write it equals the store's current factor, bit for bit (the same products in the same order)."""

    def __init__(self, base: dict[str, float], log: tuple[tuple[int, int, str, float], ...]) -> None:
        self._seqs: dict[str, list[int]] = {}
        self._products: dict[str, list[float]] = {}
        for rel in {*base, *(entry[2] for entry in log)}:
            seqs, products, product = [], [base.get(rel, 1.0)], base.get(rel, 1.0)
            for seq, _, key, factor in log:
                if key == rel:
                    product *= factor
                    seqs.append(seq)
                    products.append(product)
            self._seqs[rel], self._products[rel] = seqs, products

    def _factor(self, rel: str, seq: int) -> float:
        seqs = self._seqs.get(rel)
        return 1.0 if seqs is None else self._products[rel][bisect.bisect_left(seqs, seq)]

    def before(self, seq: int, rel: str) -> float:
        return self._factor("*", seq) * self._factor(rel, seq)


# what each op of a replayed Change may carry
_REPLAY_RECORDS: dict[str, tuple[type, ...]] = {
    "put": (Item, Edge), "delete": (Item, Edge), "weight": (Edge,), "scale": (WeightScale,),
    "kappa": (KappaUpdate,), "erase": (Item, Edge),
}  # fmt: skip


def _erased(columns: dict[str, np.ndarray]) -> np.ndarray:
    """Which rows (sorted by key, then seq) an erasing tombstone (ERASE) of their id takes: every row of
    the id up to its last such tombstone, that one included (a version written after it stays)."""
    flags = columns["flags"]
    marks = (flags & (FLAG_TOMBSTONE | FLAG_ERASE)) == (FLAG_TOMBSTONE | FLAG_ERASE)
    n = flags.shape[0]
    if not marks.any():
        return np.zeros(n, dtype=np.bool_)
    starts, group = _key_groups(columns)
    last_mark = np.maximum.reduceat(np.where(marks, np.arange(n), -1), starts)
    return np.arange(n) <= last_mark[group]


def _key_groups(columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """For rows sorted by key: where each key's run of rows starts, and each row's run number."""
    hi, lo = columns["key_hi"], columns["key_lo"]
    first = np.ones(hi.shape[0], dtype=np.bool_)
    first[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
    return np.flatnonzero(first), np.cumsum(first) - 1


def _forgotten(
    keep: np.ndarray, groups: tuple[np.ndarray, np.ndarray] | None, flags: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """For a policy's ``keep`` over rows sorted by (key, seq), grouped by key (``groups``, None when nothing
    was dropped): the newest row of each item id whose every row it dropped (forgotten: an erasing tombstone
    gives that to the change feed), and a mask of the other dropped rows (some versions of an id, or edges:
    changes the feed cannot give)."""
    n = keep.shape[0]
    dropped = ~keep
    if groups is None:
        return np.empty(0, dtype=np.int64), dropped
    starts, group = groups
    items = (flags & (FLAG_EDGE | FLAG_OVERLAY)) == 0
    whole = np.logical_and.reduceat(dropped, starts) & np.logical_or.reduceat(items, starts)
    last = np.append(starts[1:], n) - 1
    return last[whole], dropped & ~whole[group]


def _legacy_provenance(sorts: tuple[str, type] | None, change: Change) -> bool:
    """Whether ``change``, in the transaction of a ``sorts`` change, is a provenance edge after the items a
    compaction policy added (one transaction in stores written before 2026-12-07)."""
    record = change.record
    return (
        sorts in (("put", Item), ("provenance", Edge))
        and change.op == "put"
        and isinstance(record, Edge)
        and record.rel == PROVENANCE
    )


_KAPPA_PREFIX = EDGE_PREFIX + EDGE_SEPARATOR  # κ overlay id = this + item id: no item or edge id starts so
_KAPPA_KIND = "\x1ekappa"  # the kind of κ overlay rows (never an item's: they are not items)
_OVERLAY_SUFFIX = "\x1d"  # overlay id = edge id + this: its own version chain, not the edge's
_SCALE_ID = "\x1escale"
PROVENANCE = "derived_from"


class _LazyItems:
    """The items of some rows of one source as a search saw them, built together on the first request, or
    only some of them (:meth:`some`, for :meth:`Hit.load`). The source's arrays stay alive while a hit holds
    this; segments are never unmapped, only unlinked."""

    __slots__ = ("_ids", "_items", "_rows", "_seq", "_some", "_source")

    def __init__(self, source: Any, rows: np.ndarray, snap_seq: int, ids: list[str]) -> None:
        self._source, self._rows, self._seq, self._ids = source, rows, snap_seq, ids  # ids: decoded already
        self._items: list[Item] | None = None
        self._some: dict[int, Item] = {}  # built one by one before all were

    def __call__(self, index: int) -> Item:
        items = self._items
        if items is None:  # two threads may both build: the same items, and either list will do
            items = T4DX._items(self._source, self._rows, self._seq, ids=self._ids)
            for i, item in self._some.items():  # an item handed out already stays the one handed out
                items[i] = item
            self._items = items
        return items[index]

    def some(self, indices: list[int]) -> list[Item]:
        """The items at ``indices``, building those not built yet together."""
        if self._items is not None:
            return [self._items[i] for i in indices]
        some = self._some
        missing = [i for i in dict.fromkeys(indices) if i not in some]
        if missing:
            built = T4DX._items(
                self._source, self._rows[missing], self._seq, ids=[self._ids[i] for i in missing]
            )
            for i, item in zip(missing, built, strict=True):
                some.setdefault(i, item)
        return [some[i] for i in indices]


def _sources(snap: _Snapshot) -> list[tuple[Any, int]]:
    """The snapshot's sources, newest first: the memtable (its first ``mem_n`` rows), then segments."""
    return [(snap.mem, snap.mem_n), *((segment, segment.n) for segment in reversed(snap.segments))]


def _link_across_segments(segments: Sequence[Segment]) -> None:
    """At open: link each key's last version in a segment to its next version in a newer segment."""
    if len(segments) < 2:
        return
    src, row = kway_merge(segments)
    columns = {
        name: np.empty(len(src), dtype=ROW_COLUMNS[name])
        for name in ("key_hi", "key_lo", "seq", "recorded_at", "next_seq", "superseded_at")
    }
    for s, segment in enumerate(segments):
        mask = src == s
        for name in ("key_hi", "key_lo", "seq", "recorded_at"):
            columns[name][mask] = getattr(segment, name)[row[mask]]
    version_chains(columns)
    for s, segment in enumerate(segments):
        mask = src == s
        segment.set_links(columns["next_seq"][mask], columns["superseded_at"][mask], row[mask])
