"""The biology tests share the spiking tests' one-thread fixture (tiny tensors, shared cores)."""

from __future__ import annotations

from tests.spiking.conftest import _one_thread  # noqa: F401  (an autouse fixture)
