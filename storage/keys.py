"""Item ids and their 128-bit storage keys.

Ids are strings. Inside the engine every id becomes a 128-bit key, stored as two ``uint64`` columns
(``key_hi``, ``key_lo``) that sort, merge and hash cheaply in Numba:

* a canonical UUID string (lowercase, hyphenated: what :func:`new_ids` makes) maps to its own 128 bits;
* any other string maps to the 128-bit BLAKE2b digest of its UTF-8 bytes.

The map is a function of the string alone, so the same id always finds the same key, and distinct
strings collide with probability about 2^-128 per pair.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import threading
import uuid
from collections.abc import Iterator

import numpy as np

from t4dm.errors import InvalidInput

__all__ = ["check_id", "edge_id", "key_of", "key_u64", "keys_of", "new_ids", "seeded_ids"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
_MASK64 = (1 << 64) - 1
# byte positions of the hyphens and of the 32 hex digits inside the 36-character hyphenated form
_DASH_POS = np.array([8, 13, 18, 23], dtype=np.intp)
_HEX_POS = np.setdiff1d(np.arange(36), _DASH_POS).astype(np.intp)
_DASH = ord("-")
_HEX_VALUE = np.full(256, 16, dtype=np.uint8)  # a character's value as a lowercase hex digit, else 16
_HEX_VALUE[_HEX] = np.arange(16, dtype=np.uint8)
MAX_ID_BYTES = 1024
EDGE_PREFIX = "\x1e"  # edge and overlay ids start with it; item ids may not
EDGE_SEPARATOR = "\x1f"  # between an edge id's src, rel and dst; no id or relation holds it


def check_id(value: object, field: str = "id") -> str:
    """Return ``value`` if it is a usable id (a non-empty string of at most 1024 UTF-8 bytes)."""
    if not isinstance(value, str) or not value:
        raise InvalidInput(field, value, "an id must be a non-empty string")
    if len(value) > MAX_ID_BYTES // 4 and len(value.encode("utf-8", "surrogatepass")) > MAX_ID_BYTES:
        raise InvalidInput(field, value, f"an id must be at most {MAX_ID_BYTES} UTF-8 bytes")
    if value[0] == EDGE_PREFIX:
        raise InvalidInput(field, value, "ids starting with U+001E are reserved for edges")
    if EDGE_SEPARATOR in value:
        raise InvalidInput(field, value, "U+001F is reserved: it separates an edge's ends and relation")
    return value


def edge_id(src: str, rel: str, dst: str) -> str:
    """The id of edge ``src -rel-> dst`` (its key is this string's, see :func:`key_of`)."""
    return f"{EDGE_PREFIX}{src}{EDGE_SEPARATOR}{rel}{EDGE_SEPARATOR}{dst}"


def key_of(id: str) -> tuple[int, int]:
    """The ``(hi, lo)`` 64-bit halves of the 128-bit key of ``id`` (see the module docstring)."""
    if len(id) == 36 and _UUID.fullmatch(id):
        value = int(id.replace("-", ""), 16)
    else:
        try:
            raw = id.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidInput("id", id, "an id must be encodable as UTF-8") from exc
        value = int.from_bytes(hashlib.blake2b(raw, digest_size=16).digest(), "big")
    return value >> 64, value & _MASK64


def key_u64(id: str) -> tuple[np.uint64, np.uint64]:
    """:func:`key_of` as ``np.uint64`` scalars, the type the Numba lookups take without conversion."""
    hi, lo = key_of(id)
    return np.uint64(hi), np.uint64(lo)


def _key_bytes(id: str) -> bytes:
    """The 16 big-endian bytes of :func:`key_of`'s 128-bit key."""
    if len(id) == 36 and _UUID.fullmatch(id):
        return bytes.fromhex(id.replace("-", ""))
    try:
        raw = id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInput("id", id, "an id must be encodable as UTF-8") from exc
    return hashlib.blake2b(raw, digest_size=16).digest()


def keys_of(ids: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Keys of many ids: two ``uint64`` arrays ``(key_hi, key_lo)`` of length ``len(ids)`` (the same as
    :func:`key_of`, made from the keys' bytes without Python integers). From 32 ids, canonical UUIDs (what
    the store makes) are parsed together with NumPy, ~0.2 µs an id against ~1 one at a time; any other id
    is keyed alone."""
    n = len(ids)
    if not n:
        return np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64)
    raw = None
    if n >= 32 and all(len(i) == 36 for i in ids):
        with contextlib.suppress(UnicodeEncodeError):
            raw = "".join(ids).encode("ascii")
    if raw is None:
        pairs = np.frombuffer(b"".join([_key_bytes(i) for i in ids]), dtype=">u8").reshape(-1, 2)
    else:
        text = np.frombuffer(raw, dtype=np.uint8).reshape(n, 36)
        digits = _HEX_VALUE[text[:, _HEX_POS]]  # 16 where a character is not a lowercase hex digit
        key = np.ascontiguousarray((digits[:, 0::2] << 4) | digits[:, 1::2])  # uint8: each key's 16 bytes
        pairs = key.view(">u8")
        odd = np.flatnonzero((digits > 15).any(axis=1) | (text[:, _DASH_POS] != _DASH).any(axis=1))
        if odd.size:  # not canonical UUIDs: hashed
            pairs[odd] = np.frombuffer(b"".join([_key_bytes(ids[i]) for i in odd.tolist()]), ">u8").reshape(
                -1, 2
            )
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


_seeded = threading.local()  # .rng: a numpy Generator while seeded_ids() is active on this thread


@contextlib.contextmanager
def seeded_ids(seed: int) -> Iterator[None]:
    """Within the block, on this thread, new ids come from a generator seeded with ``seed``: the same writes
    in the same order get the same ids, so an evaluation's ties (broken by id) fall the same way every run.
    For fresh stores only: the same seed on a store that already holds its ids would give an existing id
    again, and an insert with an existing id writes a new version of that memory."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise InvalidInput("seed", seed, "expected an int")
    previous = getattr(_seeded, "rng", None)
    _seeded.rng = np.random.default_rng(seed)
    try:
        yield
    finally:
        _seeded.rng = previous


def new_ids(n: int) -> tuple[list[str], np.ndarray, np.ndarray]:
    """``n`` random (version 4) UUIDs: ``(ids, key_hi, key_lo)``, the keys being what :func:`key_of` gives.

    Large batches are made in bulk with numpy (about 0.2 µs an id); a few ids come from :func:`uuid.uuid4`.
    Inside :func:`seeded_ids` every id comes from its seeded generator.
    """
    rng = getattr(_seeded, "rng", None)
    if n <= 16 and rng is None:
        made = [uuid.uuid4() for _ in range(n)]
        hi = np.array([u.int >> 64 for u in made], dtype=np.uint64)
        lo = np.array([u.int & _MASK64 for u in made], dtype=np.uint64)
        return [str(u) for u in made], hi, lo
    if n == 0:
        return [], np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.uint64)
    entropy = os.urandom(16 * n) if rng is None else rng.bytes(16 * n)
    raw = np.frombuffer(entropy, dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # version 4
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80  # RFC 4122 variant
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[raw >> 4]
    digits[:, 1::2] = _HEX[raw & 0x0F]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    text[:, _HEX_POS] = digits
    joined = text.tobytes().decode("ascii")
    halves = raw.view(">u8").astype(np.uint64)
    ids = [joined[i : i + 36] for i in range(0, 36 * n, 36)]
    return ids, np.ascontiguousarray(halves[:, 0]), np.ascontiguousarray(halves[:, 1])
