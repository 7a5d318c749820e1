"""Latency and throughput of PE per backend, precision and batch size, with a regression gate."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Optional

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pe_export.bench.backends import RunnerOpener, runner_opener
from pe_export.bench.latency import cuda_event_ms, wall_ms
from pe_export.errors import Unavailable
from pe_export.memory import peak_rss_mb, reset_peak_rss
from pe_export.model import LoadedModel, ModelSource, load_source
from pe_export.openvino.ir import source_precision
from pe_export.precision.convert import require_tools
from pe_export.precision.profiles import find_profile
from pe_export.precisions import PRECISIONS
from pe_export.report import CompareMode, LatencyRow, Report, make_report, summarize
from pe_export.runners import BACKENDS, Runner
from pe_export.runners.device import Device, cpu_name, cuda_name
from pe_export.validate import BENCH_SEED, seeded_batch
from pe_export.versions import versions


class BenchSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    backends: list[str] = ["torch", "onnxruntime"]
    precisions: list[str] = ["fp32"]
    batches: list[int] = [1]
    warmup: int = Field(2, ge=0)
    iters: Optional[int] = Field(10, ge=1)
    seconds: Optional[float] = Field(None, gt=0)
    threads: Optional[int] = Field(None, ge=1)
    device: Device = "cpu"
    cuda_graph: bool = False  # TensorRT rows replay a captured CUDA graph
    profile: Optional[str] = None  # TensorRT rows: the profile (name or YAML) whose engines are timed
    interleave: bool = False  # all runners open at once, timed round-robin: every row sees the same load

    @field_validator("backends", "precisions")
    @classmethod
    def _known(cls, value: list[str], info) -> list[str]:
        allowed = BACKENDS if info.field_name == "backends" else PRECISIONS
        unknown = [v for v in value if v not in allowed]
        if unknown:
            kind = info.field_name.removesuffix("s")
            raise ValueError(f"unknown {kind}(s) {', '.join(unknown)}; choose from {', '.join(allowed)}")
        return value

    @model_validator(mode="after")
    def _tensorrt_options_need_tensorrt(self) -> "BenchSettings":
        used = [name for name, on in (("--cuda-graph", self.cuda_graph), ("--profile", self.profile)) if on]
        if used and "tensorrt" not in self.backends:
            raise ValueError(f"{' and '.join(used)} applies to the tensorrt backend only")
        return self

    @model_validator(mode="after")
    def _rounds_are_counted(self) -> "BenchSettings":
        if self.interleave and self.seconds:
            raise ValueError("--interleave times --iters rounds; it does not take --seconds")
        return self

    @field_validator("batches")
    @classmethod
    def _positive_batches(cls, value: list[int]) -> list[int]:
        if not value or any(b < 1 for b in value):
            raise ValueError("batch sizes must be positive")
        return value


def timed_iterations(run: Callable[[], object], settings: BenchSettings, tick: Callable[[], None],
                     timer: Callable[[Callable[[], object]], float] = wall_ms) -> list[float]:
    """Warm up, then time `iters` calls (or as many as fit in `seconds`); milliseconds each."""
    for _ in range(settings.warmup):
        run()
    samples: list[float] = []
    deadline = time.perf_counter() + settings.seconds if settings.seconds else None
    while (len(samples) < settings.iters) if deadline is None else (time.perf_counter() < deadline or not samples):
        samples.append(timer(run))
        tick()
    return samples


def measure_row(runner: Runner, backend: str, precision: str, batch: np.ndarray, settings: BenchSettings,
                tick: Callable[[], None] = lambda: None) -> LatencyRow:
    reset_peak_rss()
    cuda = _on_cuda(settings)
    samples = timed_iterations(lambda: runner.run(batch), settings, tick, cuda_event_ms if cuda else wall_ms)
    return _row(backend, precision, len(batch), samples, cuda)


def _on_cuda(settings: BenchSettings) -> bool:
    cuda = settings.device == "cuda" and torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    return cuda


def _row(backend: str, precision: str, batch: int, samples: list[float], cuda: bool) -> LatencyRow:
    stats = summarize(samples)
    return LatencyRow(
        backend=backend, precision=precision, batch=batch, latency_ms=stats,
        throughput_ips=batch * 1e3 / stats.mean, peak_rss_mb=round(peak_rss_mb(), 1),
        gpu_memory_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None, iters=len(samples),
    )


def bench_rows(
    loaded: LoadedModel,
    settings: BenchSettings,
    open_runner: RunnerOpener,
    on_row: Callable[[LatencyRow], None] = lambda row: None,
    tick: Callable[[], None] = lambda: None,
) -> Iterator[LatencyRow]:
    """Rows in order backend x precision x batch; a runner is opened once per backend and precision.

    With `interleave`, rows come batch by batch: every runner stays open, and each timed round runs
    each of them once, so a change in the machine's load reaches all rows alike (peak RSS is then
    that of all runners together)."""
    pairs = [(b, p) for b in settings.backends for p in settings.precisions if BACKENDS[b].runs(p)]
    rows = _interleaved_rows(loaded, settings, pairs, open_runner, tick) if settings.interleave else (
        row for pair in pairs for row in _pair_rows(loaded, settings, pair, open_runner, tick))
    for row in rows:
        on_row(row)
        yield row


def _pair_rows(loaded: LoadedModel, settings: BenchSettings, pair: tuple[str, str], open_runner: RunnerOpener,
               tick: Callable[[], None]) -> Iterator[LatencyRow]:
    with open_runner(*pair) as runner:
        for batch in settings.batches:
            yield measure_row(runner, *pair, seeded_batch(loaded.variant, batch, BENCH_SEED), settings, tick)


def _interleaved_rows(loaded: LoadedModel, settings: BenchSettings, pairs: list[tuple[str, str]],
                      open_runner: RunnerOpener, tick: Callable[[], None]) -> Iterator[LatencyRow]:
    with ExitStack() as stack:
        runners = {pair: stack.enter_context(open_runner(*pair)) for pair in pairs}
        for batch in settings.batches:
            inputs = seeded_batch(loaded.variant, batch, BENCH_SEED)
            reset_peak_rss()
            cuda = _on_cuda(settings)
            timer = cuda_event_ms if cuda else wall_ms
            for runner in runners.values():
                for _ in range(settings.warmup):
                    runner.run(inputs)
            samples: dict[tuple[str, str], list[float]] = {pair: [] for pair in runners}
            for _ in range(settings.iters):
                for pair, runner in runners.items():
                    samples[pair].append(timer(lambda: runner.run(inputs)))
                    tick()
            yield from (_row(*pair, batch, samples[pair], cuda) for pair in runners)


def skipped_pairs(settings: BenchSettings) -> list[str]:
    return [f"{b} {p}" for b in settings.backends for p in settings.precisions if not BACKENDS[b].runs(p)]


def latency_report(loaded: LoadedModel, settings: BenchSettings, rows: list[LatencyRow], device: str | None = None,
                   interrupted: bool = False) -> Report:
    recorded = {**settings.model_dump(), "threads": settings.threads or torch.get_num_threads(),
                "skipped": skipped_pairs(settings),
                "weights": loaded.source.as_dict(), "timer": "CUDA events" if settings.device == "cuda" else "perf_counter"}
    return make_report("latency", loaded.variant.name, device or cpu_name(), versions(), recorded, rows, interrupted)


def regressions(report: Report, baseline: Report, max_regression_pct: float,
                mode: CompareMode = "absolute", reference: str = "torch") -> list[str]:
    """Rows slower than the baseline's by more than the threshold (p50).

    `ratio` compares each row's p50 relative to the `reference` backend's row of the same precision
    and batch in the same report, so machine speed cancels out: what CI on shared machines needs.
    """
    def keyed(r: Report) -> dict[tuple, LatencyRow]:
        return {(row.backend, row.precision, row.batch): row for row in r.results}

    def value(rows: dict[tuple, LatencyRow], key: tuple) -> float | None:
        if mode == "absolute":
            return rows[key].latency_ms.p50
        ref = rows.get((reference, "fp32", key[2]))
        return rows[key].latency_ms.p50 / ref.latency_ms.p50 if ref else None

    now, before = keyed(report), keyed(baseline)
    found = []
    for key in now.keys() & before.keys():
        if mode == "ratio" and key[0] == reference and key[1] == "fp32":
            continue
        current, past = value(now, key), value(before, key)
        if current is None or past is None:
            continue
        change = (current / past - 1) * 100
        if change > max_regression_pct:
            unit = "ms" if mode == "absolute" else f"x {reference}"
            found.append(f"{key[0]} {key[1]} batch {key[2]}: {past:.3g} -> {current:.3g} {unit} (+{change:.0f}%)")
    return sorted(found)


def check_request(settings: BenchSettings) -> None:
    """Refuse, before any work, a run this machine cannot do (no GPU, a runtime or converter not installed)
    or a profile that cannot be read."""
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise Unavailable("--device cuda needs a CUDA GPU and a CUDA build of torch; none is available here")
    if settings.profile:
        find_profile(settings.profile)
    for backend in [BACKENDS[name] for name in settings.backends]:
        backend.require()
        for precision in settings.precisions:
            if backend.runtime != "torch" and backend.runs(precision):
                # OpenVINO's fp32 and bf16 IR both come from the fp32 ONNX
                require_tools(source_precision(precision) if backend.runtime == "openvino" else precision)


def bench_variant(
    source: ModelSource,
    settings: BenchSettings,
    on_row: Callable[[LatencyRow], None] = lambda row: None,
    progress: Callable[[str], None] = lambda step: None,
) -> Report:
    """`pe-export bench`: check the request, load the weights, then every row (see `run_bench`)."""
    check_request(settings)
    progress("loading weights")
    return run_bench(load_source(source), settings, on_row, progress=progress)


def run_bench(
    loaded: LoadedModel,
    settings: BenchSettings,
    on_row: Callable[[LatencyRow], None] = lambda row: None,
    tick: Callable[[], None] = lambda: None,
    progress: Callable[[str], None] = lambda step: None,
) -> Report:
    """Every backend x precision x batch row; Ctrl-C keeps the finished rows (report.interrupted)."""
    check_request(settings)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    opener = runner_opener(loaded, settings, progress)
    rows: list[LatencyRow] = []
    device = cuda_name() if settings.device == "cuda" else None
    try:
        for row in bench_rows(loaded, settings, opener, on_row, tick):
            rows.append(row)
    except KeyboardInterrupt:
        return latency_report(loaded, settings, rows, device, interrupted=True)
    return latency_report(loaded, settings, rows, device)
