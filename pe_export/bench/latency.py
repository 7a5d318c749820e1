"""Timing one call, on the wall clock or between CUDA events, and summarizing the samples."""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from pe_export.report import LatencyMs


def wall_ms(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1e3


def cuda_event_ms(run: Callable[[], object]) -> float:
    """GPU time between two CUDA events around the call (end to end, copies included)."""
    import torch

    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record()
    run()
    end.record()
    end.synchronize()
    return begin.elapsed_time(end)


def summarize(samples_ms: list[float]) -> LatencyMs:
    a = np.asarray(samples_ms, dtype=np.float64)
    p50, p90, p95, p99 = np.percentile(a, [50, 90, 95, 99])
    return LatencyMs(min=float(a.min()), mean=float(a.mean()), p50=float(p50), p90=float(p90), p95=float(p95), p99=float(p99))
