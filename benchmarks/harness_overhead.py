"""The latency harness's own cost per timed iteration, against one T16 onnxruntime run.

The harness's bookkeeping (timer calls, sample list, progress tick) is timed around a no-op
runner, and set against the mean time of a plain loop of onnxruntime runs, in one process.

    python benchmarks/harness_overhead.py
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.progress import Progress

from pe_export.bench.bench import BenchSettings, timed_iterations
from pe_export.model import load_model
from pe_export.onnx.export import export_onnx
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import BENCH_SEED, seeded_batch

VARIANT = "PE-Spatial-T16-512"


def main() -> None:
    loaded = load_model(VARIANT, random_init=True)
    with tempfile.TemporaryDirectory() as folder:
        runner = OrtRunner(export_onnx(loaded, output=Path(folder) / "m.onnx").path, threads=2)
        x = seeded_batch(loaded.variant, 1, BENCH_SEED)
        for _ in range(3):
            runner.run(x)
        iters = 30
        start = time.perf_counter()
        for _ in range(iters):
            runner.run(x)
        run_ms = (time.perf_counter() - start) * 1e3 / iters

    noop_iters = 20000
    settings = BenchSettings(warmup=0, iters=noop_iters)
    with Progress(transient=True) as bar:
        task = bar.add_task("overhead", total=noop_iters)
        start = time.perf_counter()
        timed_iterations(lambda: None, settings, lambda: bar.advance(task))
        harness_ms = (time.perf_counter() - start) * 1e3 / noop_iters
    print(f"{VARIANT} onnxruntime CPU run, batch 1: {run_ms:.2f} ms per iteration")
    print(f"harness bookkeeping per timed iteration: {harness_ms * 1e3:.2f} us")
    print(f"overhead: {100 * harness_ms / run_ms:.4f}% of one run (target <= 2%)")


if __name__ == "__main__":
    main()
