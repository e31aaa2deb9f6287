"""One exception hierarchy for the whole package.

Every error T4DM raises on purpose derives from :class:`T4DMError`. Errors about bad input also derive
from :class:`ValueError` (or :class:`KeyError` for unknown ids), so generic handlers keep working, and they
carry the offending ``field`` and ``value`` as attributes as well as in the message.

    T4DMError
    ├── InvalidInput (ValueError)           bad argument: names the field and the value
    │   ├── InvalidVector                  NaN / inf, wrong dtype or rank
    │   ├── InvalidTime                    naive datetime, valid_to <= valid_from, ...
    │   └── PayloadNotSerializable         fields that msgpack cannot store
    └── T4DXError                           the storage engine
        ├── DimensionMismatch (InvalidInput)
        ├── UnknownId (KeyError)
        ├── StoreLocked                    another writer holds the store
        ├── StoreClosed
        ├── NotAStore                      a path that is a file, or a folder that is not a store
        ├── StorageIOError (OSError)       an OS error while touching a named file
        └── Corruption                     a checksum or framing failure, naming the file
            ├── CorruptWAL
            ├── CorruptSegment
            └── CorruptManifest
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "CorruptManifest",
    "CorruptSegment",
    "CorruptWAL",
    "Corruption",
    "DimensionMismatch",
    "InvalidInput",
    "InvalidTime",
    "InvalidVector",
    "NotAStore",
    "PayloadNotSerializable",
    "ReadOnlyStore",
    "StorageIOError",
    "StoreClosed",
    "StoreLocked",
    "T4DMError",
    "T4DXError",
    "UnknownId",
]


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class T4DMError(Exception):
    """Base class of every error T4DM raises on purpose."""


class InvalidInput(T4DMError, ValueError):
    """An argument has a bad value. ``field`` names it and ``value`` holds what was given."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"{field}={_short(value)}: {reason}")


class InvalidVector(InvalidInput):
    """A vector with NaN or inf, a non-numeric dtype, or the wrong rank."""


class InvalidTime(InvalidInput):
    """A naive datetime, an empty valid-time interval, or a time out of range."""


class PayloadNotSerializable(InvalidInput):
    """``fields`` holds something that cannot be stored (not JSON-like)."""


class T4DXError(T4DMError):
    """Base class of storage-engine errors."""


class DimensionMismatch(T4DXError, InvalidInput):
    """A vector (or a store) has another dimension than expected."""

    def __init__(self, field: str, value: Any, expected: int) -> None:
        self.expected = expected
        InvalidInput.__init__(self, field, value, f"expected dimension {expected}")


class UnknownId(T4DXError, KeyError):
    """An update or delete names an id that has no live version."""

    def __init__(self, id: Any, field: str = "id") -> None:
        self.field = field
        self.value = id
        super().__init__(f"{field}={_short(id)}: no live item with this id")

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class StoreLocked(T4DXError):
    """Another writer (process or open handle) holds the store's lock."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"store {path!r} is locked by another writer")


class ReadOnlyStore(T4DXError):
    """A write to a store opened ``read_only=True`` (it reads beside the process that writes)."""

    def __init__(self, path: str, operation: str) -> None:
        self.path = path
        self.operation = operation
        super().__init__(f"{operation}: store {path!r} is open read-only (read_only=True); open it to write")


class StoreClosed(T4DXError):
    """The store was closed."""


class NotAStore(T4DXError):
    """The path is a file, or a folder holding something other than a T4DX store."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"{path!r}: {reason}")


class StorageIOError(T4DXError, OSError):
    """An operating-system error while reading or writing a named file."""

    def __init__(self, path: str, cause: OSError) -> None:
        self.path = path
        self.cause = cause
        super().__init__(cause.errno, f"{path}: {cause.strerror or cause}")


class Corruption(T4DXError):
    """A file failed its checksum or framing. ``path`` names it, ``offset`` where known."""

    def __init__(self, path: str, reason: str, offset: int | None = None) -> None:
        self.path = path
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{path}{where}: {reason}")


class CorruptWAL(Corruption):
    """A bad write-ahead-log record that is not a torn tail (valid records follow it)."""


class CorruptSegment(Corruption):
    """A segment file failed its checksum or framing."""


class CorruptManifest(Corruption):
    """The manifest failed its checksum or framing."""
