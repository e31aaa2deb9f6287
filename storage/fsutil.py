"""Durable file operations: atomic publish, directory fsync, framed checksummed files, typed OS errors."""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator

import crc32c

from t4dm.errors import StorageIOError

__all__ = ["checksum", "fsync_dir", "io_errors", "publish_bytes", "read_framed", "write_framed"]


def checksum(data: bytes | memoryview, value: int = 0) -> int:
    """CRC32C (Castagnoli, hardware-accelerated where the CPU has it), chainable through ``value``."""
    return crc32c.crc32c(data, value=value)


@contextlib.contextmanager
def io_errors(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a low-level :class:`OSError` into :class:`StorageIOError` naming ``path``."""
    try:
        yield
    except StorageIOError:
        raise
    except OSError as exc:
        raise StorageIOError(os.fspath(path), exc) from exc


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync a directory, so that a rename or a new file inside it survives a power loss."""
    with io_errors(path):
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_bytes(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically: write a temporary file, fsync, rename, fsync the folder.

    A crash at any instant leaves either the old file or the new one, never a mix.
    """
    tmp = path + ".tmp"
    with io_errors(tmp):
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    fsync_dir(os.path.dirname(path) or ".")


# A small framed file: magic (8 bytes) | format (u32) | body length (u32) | CRC32C of body (u32) | body.
_FRAME = struct.Struct("<8sIII")


def write_framed(path: str, magic: bytes, format_version: int, body: bytes) -> None:
    """Publish ``body`` at ``path`` inside a checksummed frame (see :func:`read_framed`)."""
    publish_bytes(path, _FRAME.pack(magic, format_version, len(body), checksum(body)) + body)


def read_framed(path: str, magic: bytes, supported: int) -> tuple[int, bytes] | str:
    """Read a file written by :func:`write_framed`.

    Returns ``(format_version, body)``, or a string saying what is wrong with the frame (the caller
    raises its own typed corruption error with it).
    """
    with io_errors(path), open(path, "rb") as f:
        raw = f.read()
    if len(raw) < _FRAME.size:
        return f"file too short ({len(raw)} bytes)"
    got_magic, version, length, crc = _FRAME.unpack_from(raw)
    if got_magic != magic:
        return f"bad magic {got_magic!r}"
    if version > supported:
        return f"format {version} is newer than this library reads ({supported})"
    body = raw[_FRAME.size :]
    if len(body) != length:
        return f"body is {len(body)} bytes, header says {length}"
    if checksum(body) != crc:
        return "checksum mismatch"
    return version, body


def append_framed(path: str, magic: bytes, format_version: int, body: bytes) -> None:
    """Append ``body`` to ``path`` (made when missing) as one frame of :func:`write_framed`'s layout, and
    fsync it (and the folder, when the file is new): a journal of small records."""
    new = not os.path.exists(path)
    with io_errors(path):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, _FRAME.pack(magic, format_version, len(body), checksum(body)) + body)
            os.fsync(fd)
        finally:
            os.close(fd)
    if new:
        fsync_dir(os.path.dirname(path) or ".")


def read_appended(path: str, magic: bytes, supported: int) -> tuple[list[bytes], str | None]:
    """The bodies :func:`append_framed` wrote to ``path``, in order, up to the first frame that is cut short
    or damaged (a torn last append), and what was wrong with that frame (None when all were whole)."""
    with io_errors(path), open(path, "rb") as f:
        raw = f.read()
    bodies, pos = [], 0
    while pos < len(raw):
        if len(raw) - pos < _FRAME.size:
            return bodies, f"a frame cut short at byte {pos}"
        got_magic, version, length, crc = _FRAME.unpack_from(raw, pos)
        body = raw[pos + _FRAME.size : pos + _FRAME.size + length]
        if got_magic != magic or version > supported or len(body) != length or checksum(body) != crc:
            return bodies, f"a damaged frame at byte {pos}"
        bodies.append(body)
        pos += _FRAME.size + length
    return bodies, None
