"""Wall-clock latency statistics of a callable."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LatencyStats:
    """Milliseconds per call over the timed iterations (warm-up excluded)."""

    min: float
    mean: float
    p50: float
    p90: float
    p95: float
    p99: float
    iters: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def summarize(samples_ms: list[float]) -> LatencyStats:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return LatencyStats(float(a.min()), float(a.mean()), float(p50), float(p90), float(p95), float(p99), len(a))


def time_call(fn: Callable[[], object]) -> float:
    """One call's wall time in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def measure(fn: Callable[[], object], warmup: int = 1, iters: int = 10) -> LatencyStats:
    for _ in range(warmup):
        fn()
    return summarize([time_call(fn) for _ in range(iters)])
