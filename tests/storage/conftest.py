"""Fixtures for the T4DX tests: a fake clock, and stores with their data in each place it can live."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import pytest

from t4dm.storage import T4DX, UTC

DIM = 8


class FakeClock:
    """A clock the test moves by hand, so transaction times are known exactly."""

    def __init__(self, start: datetime = datetime(2025, 1, 1, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float = 1.0) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


def vec(seed: int, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


@dataclass
class Store:
    """A store under test, and a way to move its data to where the test case wants it."""

    path: str
    place: str
    durability: str
    clock: FakeClock
    options: dict[str, Any] = field(default_factory=dict)
    db: T4DX | None = None

    def open(self) -> T4DX:
        self.db = T4DX.open(self.path, dim=DIM, durability=self.durability, clock=self.clock, **self.options)
        return self.db

    def settle(self) -> T4DX:
        """Move everything written so far to ``place``: memtable, segment, compacted, reopened
        (bulk-ingest: already in segments)."""
        assert self.db is not None
        if self.place == "segment":
            self.db.flush()
        elif self.place == "compacted":
            self.db.compact()
        elif self.place == "reopened":
            self.db.close()
            self.open()
        return self.db


PLACES = ["memtable", "segment", "compacted", "reopened", "bulk-ingest"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=PLACES)
def store(request: pytest.FixtureRequest, tmp_path, clock: FakeClock):
    # bulk-ingest: a 64-byte memtable sends every write of a vector or more straight to a segment
    options = {"memtable_bytes": 64} if request.param == "bulk-ingest" else {}
    s = Store(str(tmp_path / "store"), request.param, "sync", clock, options)
    s.open()
    yield s
    if s.db is not None:
        s.db.close()


@pytest.fixture
def db(tmp_path, clock: FakeClock):
    with T4DX.open(str(tmp_path / "store"), dim=DIM, clock=clock) as handle:
        yield handle
