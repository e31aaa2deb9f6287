"""Write-ahead log: framed, checksummed records in numbered files, with group commit.

File ``wal/<n:08d>.wal``::

    header  magic "T4DXWAL\\0" | format u32 | dim u32 | file number u64 | CRC32C of the above u32
    record  sync marker u32 | body length u32 | CRC32C(length ‖ body) u32 | body

Durability modes (``T4DX.open(durability=...)``):

* ``"sync"``: a write returns after an ``fdatasync`` covering it. Writers in several threads share one
  fsync (group commit): whoever syncs covers everything written so far.
* ``"batch"``: a write returns once the record is in the operating system (it survives a crash of the
  process); a background thread fsyncs every ``sync_interval`` seconds, which bounds what a power loss
  can take.
* ``"none"``: the log is fsynced only when it is rotated or closed.

Recovery (:func:`read_records`) replays records in order. A bad record at the end of the last file is a
torn write: it is cut off with a warning. A bad record that valid records follow is corruption:
:class:`~t4dm.errors.CorruptWAL`, naming the file and the offset.
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from collections.abc import Iterator, Sequence

from t4dm.errors import CorruptWAL, StorageIOError, T4DXError

from .fsutil import checksum, fsync_dir, io_errors

__all__ = [
    "DURABILITY_MODES",
    "WAL",
    "TornWALWarning",
    "file_format",
    "read_records",
    "record_end",
    "wal_files",
    "wal_path",
]

DURABILITY_MODES = ("sync", "batch", "none")
FORMAT = 2  # 2 (2026-12-07): records may hold κ overlays and erasing tombstones (see segment.FORMAT)
_MAGIC = b"T4DXWAL\x00"
_HEADER = struct.Struct("<8sIIQ")
_HEADER_SIZE = _HEADER.size + 4
_SYNC = 0x7D4A_5852
_FRAME = struct.Struct("<III")
_LEN = struct.Struct("<I")
MAX_RECORD = (1 << 32) - 1
_SMALL_RECORD = 1 << 16


class TornWALWarning(UserWarning):
    """A torn record at the tail of the write-ahead log was cut off during recovery."""


def wal_path(directory: str, number: int) -> str:
    return os.path.join(directory, f"{number:08d}.wal")


def wal_files(directory: str) -> list[int]:
    """Numbers of the WAL files in ``directory``, ascending."""
    with io_errors(directory):
        names = os.listdir(directory)
    return sorted(int(name[:-4]) for name in names if name.endswith(".wal") and name[:-4].isdigit())


def _write_all(fd: int, parts: Sequence[bytes | memoryview]) -> None:
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        written = os.writev(fd, views[:512])
        while written:
            head = views[0]
            if written >= len(head):
                written -= len(head)
                views.pop(0)
            else:
                views[0] = head[written:]
                written = 0


class WAL:
    """The open, appendable tail of the log. Appends are serialised by the caller (the writer lock)."""

    def __init__(self, directory: str, number: int, dim: int, durability: str, sync_interval: float) -> None:
        if durability not in DURABILITY_MODES:
            raise ValueError(f"durability={durability!r}: expected one of {DURABILITY_MODES}")
        self.directory = directory
        self.dim = dim
        self.durability = durability
        self.sync_interval = sync_interval
        self._sync_lock = threading.Lock()
        self._written = 0  # bytes appended since open, over all files: the log sequence position
        self._durable = 0
        self._broken: BaseException | None = None
        self._fd = -1
        self.number = -1
        if (file_format(directory, number) or FORMAT) < FORMAT:
            # an older library's file: this one's records go to a new file of its own format (recovery replays
            # both, from the manifest's wal_start), so that library refuses them instead of misreading them
            number += 1
        self._open_file(number)
        self._stop = threading.Event()
        self._syncer: threading.Thread | None = None
        if durability == "batch":
            self._syncer = threading.Thread(target=self._sync_loop, name="t4dx-wal-sync", daemon=True)
            self._syncer.start()

    # ------------------------------------------------------------------ files
    def _open_file(self, number: int) -> None:
        path = wal_path(self.directory, number)
        with io_errors(path):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                if os.fstat(fd).st_size == 0:
                    header = _HEADER.pack(_MAGIC, FORMAT, self.dim, number)
                    os.write(fd, header + struct.pack("<I", checksum(header)))
                    os.fsync(fd)
                    fsync_dir(self.directory)
            except BaseException:
                os.close(fd)
                raise
        self._fd, self.number, self.path = fd, number, path
        self._size = os.fstat(fd).st_size  # appends track the end themselves (no lseek per record)

    def rotate(self, number: int) -> None:
        """fsync and close the current file and continue in a new one numbered ``number``."""
        with self._sync_lock:
            self._check()
            with io_errors(self.path):
                os.fsync(self._fd)
                os.close(self._fd)
            self._durable = self._written
            self._fd = -1
            self._open_file(number)

    # ------------------------------------------------------------------ appending
    def append(self, body: Sequence[bytes | memoryview]) -> int:
        """Append one record; return its end position, for :meth:`wait_durable`."""
        self._check()
        parts = [memoryview(p).cast("B") for p in body]
        length = sum(map(len, parts))
        if length > MAX_RECORD:
            raise ValueError(
                f"record of {length} bytes exceeds the WAL limit of {MAX_RECORD}: split the batch"
            )
        if length <= _SMALL_RECORD:  # one buffer, one checksum call, one write
            parts = [b"".join(parts)]
        crc = checksum(_LEN.pack(length))
        for part in parts:
            crc = checksum(part, crc)
        start = self._size
        try:
            _write_all(self._fd, [_FRAME.pack(_SYNC, length, crc), *parts])
        except OSError as exc:
            # Take the partial record back out, so that later records do not follow garbage.
            try:
                os.ftruncate(self._fd, start)
            except OSError as again:
                self._broken = again
            raise StorageIOError(self.path, exc) from exc
        self._written += _FRAME.size + length
        self._size += _FRAME.size + length
        return self._written

    def wait_durable(self, position: int) -> None:
        """Return once everything up to ``position`` is fsynced ("sync" mode); otherwise at once."""
        if self.durability != "sync" or self._durable >= position:
            return
        with self._sync_lock:
            if self._durable >= position:
                return
            target = self._written
            with io_errors(self.path):
                os.fdatasync(self._fd)
            self._durable = max(self._durable, target)

    def sync(self) -> None:
        """fsync everything written so far, whatever the durability mode."""
        with self._sync_lock:
            if self._fd < 0:
                return
            target = self._written
            with io_errors(self.path):
                os.fdatasync(self._fd)
            self._durable = max(self._durable, target)

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.sync_interval):
            if self._durable < self._written:
                try:
                    self.sync()
                except T4DXError as exc:  # surfaced at the next append
                    self._broken = exc

    def _check(self) -> None:
        if self._broken is not None:
            raise StorageIOError(self.path, OSError(f"the write-ahead log is unusable: {self._broken}"))

    def close(self) -> None:
        self._stop.set()
        if self._syncer is not None:
            self._syncer.join()
        with self._sync_lock:
            if self._fd >= 0:
                with io_errors(self.path):
                    os.fsync(self._fd)
                    os.close(self._fd)
                self._fd = -1


# ---------------------------------------------------------------------- recovery
def _frame_at(data: bytes, pos: int) -> int | None:
    """Length of a valid record body starting at ``pos``, or None."""
    if pos + _FRAME.size > len(data):
        return None
    sync, length, crc = _FRAME.unpack_from(data, pos)
    end = pos + _FRAME.size + length
    if sync != _SYNC or end > len(data):
        return None
    body = memoryview(data)[pos + _FRAME.size : end]
    if checksum(body, checksum(_LEN.pack(length))) != crc:
        return None
    return length


def _valid_record_after(data: bytes, pos: int) -> int | None:
    """Offset of the first valid record after ``pos``, or None."""
    marker = struct.pack("<I", _SYNC)
    at = data.find(marker, pos + 1)
    while at >= 0:
        if _frame_at(data, at) is not None:
            return at
        at = data.find(marker, at + 1)
    return None


def file_format(directory: str, number: int) -> int | None:
    """The format in WAL file ``number``'s header (None: no such file, or no whole header)."""
    path = wal_path(directory, number)
    try:
        with open(path, "rb") as f:
            head = f.read(_HEADER.size)
    except FileNotFoundError:
        return None
    return _HEADER.unpack_from(head)[1] if len(head) == _HEADER.size else None


def read_records(
    directory: str, number: int, dim: int, last: bool, repair: bool = True, start: int = 0
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, body)`` of each record of WAL file ``number`` (from byte ``start``, a record's offset
    or the end of one, when given: what a reader that has read up to there goes on from).

    In the last file a bad record with no valid record after it is a torn tail: the file is truncated
    there (and fsynced) with a :class:`TornWALWarning`. Anywhere else a bad record raises
    :class:`CorruptWAL`. Without ``repair`` (a reader beside a live writer, whose tail may be a record
    being written) the last file is read up to such a tail and nothing is changed or warned.
    """
    path = wal_path(directory, number)
    with io_errors(path), open(path, "rb") as f:
        head = f.read(_HEADER_SIZE)
        base = max(start, _HEADER_SIZE)
        if len(head) == _HEADER_SIZE and base > _HEADER_SIZE:
            f.seek(base)
        data = f.read()
    if len(head) < _HEADER_SIZE:
        if last and not repair:
            return
        if last:  # the crash came while the header was being written
            warnings.warn(f"{path}: incomplete WAL header, file reset", TornWALWarning, stacklevel=2)
            with io_errors(path):
                os.truncate(path, 0)
            return
        raise CorruptWAL(path, "file shorter than its header", 0)
    magic, fmt, file_dim, file_no = _HEADER.unpack_from(head)
    (crc,) = struct.unpack_from("<I", head, _HEADER.size)
    if magic != _MAGIC or crc != checksum(head[: _HEADER.size]):
        raise CorruptWAL(path, "bad header", 0)
    if fmt > FORMAT:
        raise CorruptWAL(path, f"format {fmt} is newer than this library reads ({FORMAT})", 0)
    if file_dim != dim or file_no != number:
        raise CorruptWAL(path, f"header says dim {file_dim}, file {file_no}; expected {dim}, {number}", 0)
    pos = 0  # in data, which begins at byte base of the file
    while pos < len(data):
        length = _frame_at(data, pos)
        if length is None:
            following = _valid_record_after(data, pos)
            if following is not None or not last:
                raise CorruptWAL(
                    path, "bad record (checksum or framing) followed by valid records", base + pos
                )
            if not repair:
                return
            warnings.warn(
                f"{path}: torn record at byte {base + pos} ({len(data) - pos} bytes) cut off during recovery",
                TornWALWarning,
                stacklevel=2,
            )
            with io_errors(path):
                os.truncate(path, base + pos)
                fd = os.open(path, os.O_WRONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return
        yield base + pos, data[pos + _FRAME.size : pos + _FRAME.size + length]
        pos += _FRAME.size + length


def record_end(offset: int, body: bytes) -> int:
    """The byte after the record at ``offset`` whose body :func:`read_records` gave as ``body``."""
    return offset + _FRAME.size + len(body)
