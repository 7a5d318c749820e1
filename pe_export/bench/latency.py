"""Timing one call, on the wall clock or between CUDA events."""

from __future__ import annotations

import time
from typing import Callable


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
