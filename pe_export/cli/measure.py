"""Measuring artifacts: `parity` (against the torch fp32 reference) and `bench` (latency,
throughput and memory, with a regression gate)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer

from pe_export.cli.options import BATCH_SYNTAX, DEVICE, Choice, bench_sizes, csv, first_error, flag, model_command
from pe_export.cli.output import console, finish_report, progress_bar
from pe_export.errors import BadReport, UsageError
from pe_export.precisions import PRECISIONS
from pe_export.report import CompareMode
from pe_export.runners import BACKENDS

if TYPE_CHECKING:
    from pe_export.report import Report
    from pe_export.source import ModelSource

COMPARE = Choice("comparison", tuple(get_args(CompareMode)))


@model_command
def parity(
    source: ModelSource,
    artifacts: Annotated[Optional[list[Path]], typer.Argument(help="ONNX files, OpenVINO IR (.xml), engines or ExecuTorch programs (.pte). Default: every artifact with a manifest under `artifacts/<variant>/`.")] = None,
    backends: Annotated[Optional[str], typer.Option(help=f"Comma list of {', '.join(BACKENDS)}: run each artifact on each of them that opens its file type. Default: the backend of its file type.")] = None,
    images: Annotated[Optional[Path], typer.Option(help="A folder of images (adds top-1 retrieval agreement).")] = None,
    synthetic: Annotated[int, typer.Option(help="Seeded synthetic inputs when no --images.", min=1)] = 8,
    threads: Annotated[Optional[int], typer.Option(help="Threads for onnxruntime and OpenVINO on the CPU.", min=1)] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON (schema pe-export/parity/1).")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write the report as a Markdown table.")] = None,
) -> None:
    """Compare artifacts with the torch fp32 reference on the same inputs; exit 1 if one misses its threshold.

    Per artifact: token cosine (mean and min), pooled cosine, max abs, relative L2 and, with
    --images, top-1 retrieval agreement. Thresholds per precision (token cosine mean):
    THRESHOLDS.

    Example: pe-export parity -v L14 --random-init artifacts/PE-Lang-L14-448/*.onnx --backends onnxruntime,openvino
    """
    from pe_export.bench.parity import parity_variant

    with progress_bar() as bar:
        task = bar.add_task("checking the request", total=None)
        report = parity_variant(source, list(artifacts or ()), csv(backends or ""), images, synthetic, threads,
                                on_row=lambda row: bar.advance(task),
                                progress=lambda step: bar.update(task, description=step),
                                on_total=lambda rows: bar.update(task, total=rows, description="parity"))
    finish_report(report, json_path, md_path)
    if any(row.passed is False for row in report.results):
        raise typer.Exit(1)


parity.__doc__ = (parity.__doc__ or "").replace(
    "THRESHOLDS", ", ".join(f"{p.name} {p.threshold}" for p in PRECISIONS.values()))


@model_command
def bench(
    source: ModelSource,
    backends: Annotated[str, typer.Option(help=f"Comma list of {', '.join(BACKENDS)}.")] = "torch,onnxruntime",
    precision: Annotated[str, typer.Option(help=f"Comma list of {', '.join(PRECISIONS)}.")] = "fp32",
    batch: Annotated[str, typer.Option(help=f"Batch sizes to time: {BATCH_SYNTAX} (its three sizes), e.g. 1,8,32.")] = "1",
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.", min=0)] = 2,
    iters: Annotated[int, typer.Option(help="Timed runs per row.", min=1)] = 10,
    seconds: Annotated[Optional[float], typer.Option(help="Time each row for this long instead of --iters.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch, onnxruntime and OpenVINO.", min=1)] = None,
    cuda_graph: Annotated[bool, flag("--cuda-graph", help="TensorRT rows: capture one CUDA graph per batch size and time its replay.")] = False,
    profile: Annotated[Optional[str], typer.Option(help="TensorRT rows: the profile whose engines are timed (its batch range widened to --batch).")] = None,
    interleave: Annotated[bool, flag("--interleave", help="Keep every runner open and time them round-robin, so all rows see the same machine load (rows then come batch by batch).")] = False,
    device: Annotated[str, DEVICE.option(help="Where the torch backends run (GPU timing with CUDA events).")] = "cpu",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON (schema pe-export/latency/1).")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write the report as a Markdown table.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of throughput against batch size.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="A previous latency JSON to compare with.")] = None,
    max_regression: Annotated[float, typer.Option(help="With --baseline: allowed slow-down in percent.")] = 10.0,
    compare: Annotated[str, COMPARE.option(help="With --baseline: 'absolute' p50 times, or 'ratio' to torch fp32 in the same run (for noisy machines).")] = "absolute",
) -> None:
    """Measure latency (min/mean/p50/p90/p95/p99), throughput and peak memory per backend, precision and batch.

    torch fp16/bf16 run under autocast (what a user gets without exporting anything); OpenVINO runs
    its IR, made on demand like the ONNX files; pairs a backend cannot compute here are skipped and listed.

    Example: pe-export bench -v L14 --random-init --backends torch,onnxruntime,openvino --precision fp32,bf16,int8 --batch 1,8
    """
    from pydantic import ValidationError

    from pe_export.bench.bench import BenchSettings, bench_variant, regressions, skipped_pairs
    from pe_export.bench.plot import plot_throughput, require_plotting
    from pe_export.report import load_report

    try:
        settings = BenchSettings(
            backends=csv(backends), precisions=csv(precision), batches=bench_sizes(batch),
            warmup=warmup, iters=iters, seconds=seconds, threads=threads, device=device, cuda_graph=cuda_graph,
            profile=profile,
            interleave=interleave,
        )
    except (ValidationError, ValueError) as exc:
        raise UsageError(f"bad bench settings: {first_error(exc)}") from None
    if plot:
        require_plotting()
    past = _baseline(baseline, load_report) if baseline else None
    rows = (len(settings.backends) * len(settings.precisions) - len(skipped_pairs(settings))) * len(settings.batches)
    with progress_bar() as bar:
        task = bar.add_task("rows", total=rows)
        report = bench_variant(source, settings, on_row=lambda row: bar.advance(task),
                               progress=lambda step: bar.update(task, description=step))
    finish_report(report, json_path, md_path)
    if plot and report.results:
        plot_throughput(report, plot)
        console.print(f"plot: {plot}")
    if past is not None:
        slower = regressions(report, past, max_regression, compare)  # type: ignore[arg-type]
        for line in slower:
            console.print(f"[red]regressed[/] {line}", highlight=False)
        if slower:
            raise typer.Exit(1)
        console.print(f"[green]no regression[/] beyond {max_regression:g}% ({compare}) against {baseline}")


def _baseline(path: Path, load_report: Callable[[Path], Report]) -> Report:
    try:
        return load_report(path)
    except BadReport as exc:
        raise UsageError(f"cannot use {path} as a baseline: {exc}") from None
