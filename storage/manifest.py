"""The manifest: which segments are live and where WAL replay starts, published atomically."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import msgpack

from t4dm.errors import CorruptManifest

from .fsutil import read_framed, write_framed

__all__ = ["FORMAT", "Manifest", "SegmentEntry"]

FORMAT = 1
NAME = "MANIFEST"
_MAGIC = b"T4DXMANI"


@dataclass(slots=True)
class SegmentEntry:
    id: int
    n: int
    min_seq: int
    max_seq: int
    nbytes: int


@dataclass(slots=True)
class Manifest:
    """Store-wide state that changes only at flush and compaction.

    ``segments`` are ordered oldest first, with disjoint ascending ``seq`` ranges. ``wal_start`` is
    the first WAL file that recovery replays; ``last_seq`` / ``last_recorded`` are the highest sequence
    number and transaction time held by the segments.
    """

    dim: int
    segments: list[SegmentEntry] = field(default_factory=list)
    next_segment_id: int = 1
    wal_start: int = 1
    last_seq: int = 0
    last_recorded: int = 0
    edge_scales: dict[str, float] = field(default_factory=dict)  # BATCH_SCALE_WEIGHTS factors ("*": all)
    # the scales since the last full compaction folded them, [seq, recorded_at µs, relation or "*", factor]
    # each (the change feed gives them); None in a manifest written before the feed had them
    edge_scale_log: list[list] | None = None
    edge_scale_base: dict[str, float] = field(default_factory=dict)  # the factors older than the log
    # the change feed lacks changes recorded at or before this time (µs; 0: none): what full compactions
    # folded (overlays, scales), dropped (expired versions, tombstones, erased ids, a policy's dropped
    # versions) or edited in place (a policy's κ of versions no longer live)
    folded_through: int = 0
    format: int = FORMAT

    def publish(self, directory: str) -> None:
        body = msgpack.packb(asdict(self), use_bin_type=True)
        write_framed(os.path.join(directory, NAME), _MAGIC, FORMAT, body)

    @classmethod
    def load(cls, directory: str) -> Manifest:
        path = os.path.join(directory, NAME)
        framed = read_framed(path, _MAGIC, FORMAT)
        if isinstance(framed, str):
            raise CorruptManifest(path, framed)
        try:
            raw = msgpack.unpackb(framed[1], raw=False)
            raw["segments"] = [SegmentEntry(**entry) for entry in raw["segments"]]
            return cls(**raw)
        except (TypeError, KeyError, ValueError, msgpack.UnpackException) as exc:
            raise CorruptManifest(path, f"undecodable manifest: {exc}") from exc

    @staticmethod
    def exists(directory: str) -> bool:
        return os.path.exists(os.path.join(directory, NAME))
