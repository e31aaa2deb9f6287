"""Wall-clock timing shared by the benchmarks that do not use ``triton.testing.do_bench``."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

__all__ = ["median_ms", "wall_times"]


def wall_times(
    fn: Callable[[], Any], repeat: int, sync: Callable[[], Any] | None = None
) -> tuple[float, list[float]]:
    """Run ``fn`` once, then ``repeat`` times; returns ``(first call s, [later calls s])``. ``sync`` (e.g.
    ``torch.cuda.synchronize``) runs before the clock starts and before each reading, so device work is
    inside the time it belongs to."""
    if sync is not None:
        sync()
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    first = time.perf_counter() - start
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - start)
    return first, times


def median_ms(fn: Callable[[], Any], repeat: int = 5) -> float:
    """The median of ``repeat`` calls after a first (warm-up) call, in milliseconds."""
    return 1e3 * statistics.median(wall_times(fn, repeat)[1])
