"""The `pe-export` command line: parses options, calls one library function, prints with rich."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pe_export import __version__
from pe_export.errors import PeExportError

app = typer.Typer(
    name="pe-export",
    help="Export Meta's Perception Encoder (PE) vision towers to ONNX, precision variants and TensorRT engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

VariantOpt = Annotated[
    str, typer.Option("--variant", "-v", help="Variant name, alias (L14, G14) or timm name; see `pe-export variants`.")
]
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option(
        "--checkpoint",
        "-c",
        help="Weights: a local .pt/.pth/.bin/.safetensors file or hf://owner/repo/file. "
        "Default: the variant's file on the Hugging Face hub (facebook/<name>).",
    ),
]
RandomInitOpt = Annotated[bool, typer.Option("--random-init", help="Deterministic random weights (demos, tests).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --random-init.")]


def _version(value: bool) -> None:
    if value:
        console.print(f"pe-export {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    """Export PE vision towers (Core, Lang, Spatial) for edge and production runtimes."""


@app.command()
def variants() -> None:
    """List every PE vision variant with its size and cost."""
    from pe_export.variants import VARIANTS

    table = Table(title="PE vision variants")
    for column in ("name", "alias", "family", "image", "patch", "tokens", "width", "layers", "heads"):
        table.add_column(column, justify="left" if column in ("name", "alias", "family") else "right")
    for column in ("parameters", "GMACs", "default output"):
        table.add_column(column, justify="right")
    for v in VARIANTS:
        table.add_row(
            v.name, v.alias or "", v.family, str(v.image_size), str(v.patch_size), str(v.tokens), str(v.width),
            str(v.layers), str(v.heads), f"{v.parameters:,}", f"{v.gmacs:.1f}", v.default_output,
        )
    console.print(table)


@app.command()
def info(
    variant: VariantOpt,
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Load a variant's weights with a strict key check and show its configuration.

    Example: pe-export info --variant L14 --checkpoint PE-Lang-L14-448.pt
    """
    from pe_export.info import describe

    _require_one_source(checkpoint, random_init)
    result = describe(variant, checkpoint, random_init=random_init, seed=seed)
    table = Table(show_header=False, title=result.variant.name)
    table.add_column(style="bold")
    table.add_column()
    for key, value in result.rows():
        table.add_row(key, value)
    console.print(table)


class Lowering(str, Enum):
    fused = "fused"
    decomposed = "decomposed"


class Output(str, Enum):
    tokens = "tokens"
    pooled = "pooled"


def _batch(value: str) -> Optional[int]:
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise typer.BadParameter("use 'dynamic' or a positive batch size")
    return int(value)


@app.command("onnx")
def onnx_export(
    variant: VariantOpt,
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
    output: Annotated[
        Optional[Path], typer.Option("--output-path", "-o", help="The .onnx file to write. Default: artifacts/<variant>/<variant>.<target>[.tags].onnx")
    ] = None,
    target: Annotated[
        str, typer.Option(help="Runtime preset: trt11, trt10.15 (opset 23, fused RoPE and attention), trt10, jetson (opset 17, decomposed), ort.")
    ] = "trt11",
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset; default from the target.")] = None,
    rope: Annotated[Optional[Lowering], typer.Option(help="RoPE as one RotaryEmbedding node (fused, opset 23) or plain ops (decomposed).")] = None,
    attention: Annotated[Optional[Lowering], typer.Option(help="Attention as one Attention node (fused, opset 23) or MatMul-Softmax-MatMul (decomposed).")] = None,
    batch: Annotated[str, typer.Option(help="'dynamic' (default) or a fixed batch size.")] = "dynamic",
    output_kind: Annotated[
        Optional[Output], typer.Option("--output", help="tokens (default for Lang/Spatial) or pooled (Core: attention-pooled and projected).")
    ] = None,
    layer: Annotated[int, typer.Option(help="Take the tokens after this block (negative counts from the end).")] = -1,
    strip_cls: Annotated[bool, typer.Option("--strip-cls", help="Drop the class token from the tokens (what PLM feeds its LLM).")] = False,
    simplify: Annotated[
        bool, typer.Option("--simplify/--no-simplify", help="Run onnxslim and keep its graph when it is smaller (slow on big models; the exporter's own optimizer already folds constants).")
    ] = False,
) -> None:
    """Export a variant to ONNX at its native size, proven against torch before it is written.

    Examples:
      pe-export onnx --variant L14 --random-init
      pe-export onnx --variant L14 --checkpoint PE-Lang-L14-448.pt --target jetson --batch 1
      pe-export onnx --variant PE-Core-L14-336 --target ort -o core.onnx
    """
    from pe_export.onnx.export import ExportOptions, export_variant

    _require_one_source(checkpoint, random_init)
    options = ExportOptions(
        target=target, opset=opset, rope=rope.value if rope else None, attention=attention.value if attention else None,
        batch=_batch(batch), output=output_kind.value if output_kind else None, layer=layer, strip_cls=strip_cls,
        simplify=simplify,
    )
    with console.status("checking options") as status:
        result = export_variant(
            variant, checkpoint, random_init=random_init, seed=seed, options=options, output=output,
            progress=status.update,
        )
    m = result.manifest
    parity = m["parity"]
    console.print(f"[green]wrote[/] {result.path} ({m['nodes']} nodes, opset {m['opset']['ai.onnx']}, "
                  f"{m['export_seconds']:.1f} s, peak RSS {m['peak_rss_mb'] / 1024:.2f} GiB)")
    console.print(f"parity vs torch (onnxruntime CPU, batches {parity['batches']}): cosine min {parity['cosine_min']:.7f}, "
                  f"max abs {parity['max_abs']:.2e}")
    console.print(f"manifest: {result.manifest_path}")


@app.command()
def check(
    model: Annotated[Path, typer.Argument(help="The .onnx file to lint.")],
    target: Annotated[str, typer.Option(help="trt11, trt10.15, trt10, jetson or ort.")] = "trt11",
) -> None:
    """Lint an ONNX file for a target runtime; exit 1 if anything in it cannot run there.

    Flags: RotaryEmbedding before TensorRT 10.15, Attention before 10.14 or with more than one
    output, an opset above the target's, com.microsoft and other non-standard ops, If/Loop,
    complex types, and missing external data.
    """
    from pe_export.onnx.check import check_onnx

    report = check_onnx(model, target)
    if report.ok:
        console.print(f"[green]ok[/] {report.summary()}")
        return
    for finding in report.findings:
        console.print(f"[red]x[/] {finding}", highlight=False, soft_wrap=True)
    console.print(f"[bold red]{len(report.findings)} problem(s)[/] for {report.target.runtime} in {model}")
    raise typer.Exit(1)


@app.command()
def quantize(
    variant: VariantOpt,
    precision: Annotated[str, typer.Option(help="fp16 or bf16 (mixed precision), int8 or fp8 (explicit Q/DQ from calibration).")],
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
    profile: Annotated[Optional[str], typer.Option(help="A profile name (see `pe-export profiles`) or a YAML file.")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration images: a folder, a glob ('photos/**/*.jpg') or 'synthetic'. Overrides the profile.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Calibration sample count. Overrides the profile.", min=1)] = None,
    output: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="The .onnx to write. Default: beside the fp32 ONNX, named .<precision>.onnx")] = None,
) -> None:
    """Make an FP16/BF16 or INT8/FP8 ONNX from the fp32 export (made or reused), proven against torch fp32.

    Example: pe-export quantize -v L14 --random-init --precision int8 --profile pe-lang-l14-datacenter --calib photos/
    """
    from pe_export.precision.quantize import quantize_variant

    _require_one_source(checkpoint, random_init)
    with console.status("checking the request") as status:
        result = quantize_variant(variant, precision, checkpoint, random_init=random_init, seed=seed, profile=profile,
                                  calib=calib, samples=samples, output=output, progress=status.update)
    m, row = result.manifest, result.parity
    console.print(f"[green]wrote[/] {result.path} ({precision}, Q/DQ nodes {m['qdq_nodes']['QuantizeLinear']}+"
                  f"{m['qdq_nodes']['DequantizeLinear']}, {m['seconds']} s)")
    if m["calibration"]:
        c = m["calibration"]
        console.print(f"calibration: {c['count']} samples from {c['source']} ({c['skipped']} unreadable skipped), "
                      f"method {m['method']}")
    if row.passed is None:
        console.print(f"parity: {row.note}")
    else:
        console.print(f"parity vs torch fp32 (onnxruntime CPU): token cosine mean {row.cosine_mean:.5f} "
                      f"(min {row.cosine_min:.5f}), max abs {row.max_abs:.3g}, threshold {row.threshold}")


class TrtPrecision(str, Enum):
    fp16 = "fp16"
    bf16 = "bf16"
    int8 = "int8"
    fp8 = "fp8"
    fp32 = "fp32"


def _batch_range(value: Optional[str]) -> dict:
    if not value:
        return {}
    parts = value.split(":")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise typer.BadParameter("use MIN:OPT:MAX, e.g. 1:8:32")
    low, opt, high = map(int, parts)
    return {"batch_min": low, "batch_opt": opt, "batch_max": high}


@app.command()
def trt(
    variant: VariantOpt,
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 mixed precision (the default).")] = False,
    bf16: Annotated[bool, typer.Option("--bf16", help="BF16 mixed precision.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 explicit Q/DQ from the profile's calibration.")] = False,
    fp8: Annotated[bool, typer.Option("--fp8", help="FP8 explicit Q/DQ (Ada, Hopper and later).")] = False,
    fp32: Annotated[bool, typer.Option("--fp32", help="Full fp32.")] = False,
    profile: Annotated[Optional[str], typer.Option(help="Profile name or YAML file: export options, calibration, TensorRT settings.")] = None,
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
    output: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="The engine file. Default: beside its ONNX, .engine")] = None,
    batch: Annotated[Optional[str], typer.Option(help="Optimization profile MIN:OPT:MAX, e.g. 1:8:32. Default: the profile's.")] = None,
    workspace: Annotated[Optional[float], typer.Option(help="Workspace limit in GiB.")] = None,
    opt_level: Annotated[Optional[int], typer.Option(help="Builder optimization level 0-5.", min=0, max=5)] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(help="Timing cache to load and save (faster rebuilds).")] = None,
    hardware_compat: Annotated[Optional[str], typer.Option(help="'ampere+' for an engine that runs on any Ampere or newer GPU.")] = None,
    version_compatible: Annotated[bool, typer.Option("--version-compatible", help="An engine later TensorRT versions can load.")] = False,
    dla_core: Annotated[Optional[int], typer.Option(help="Jetson: run on this DLA core with GPU fallback.", min=0)] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration images for --int8/--fp8 (folder, glob or 'synthetic').")] = None,
) -> None:
    """Build a strongly typed TensorRT engine; its precision comes from the ONNX graph.

    --int8 means: make (or reuse) the INT8 Q/DQ ONNX from the profile's calibration, then build.
    Without TensorRT or a GPU: one line saying what is missing, exit code 3, nothing written.

    Example: pe-export trt -v L14 --checkpoint PE-Lang-L14-448.pt --int8 --profile pe-lang-l14-datacenter
    """
    from pe_export.errors import UsageError
    from pe_export.trt.engine import trt_variant

    chosen = [name for name, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8), ("fp8", fp8), ("fp32", fp32)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one precision, not {' and '.join('--' + c for c in chosen)}")
    if hardware_compat not in (None, "none", "ampere+"):
        raise UsageError("--hardware-compat takes 'ampere+' (or 'none')")
    _require_one_source(checkpoint, random_init)
    with console.status("checking TensorRT and the GPU") as status:
        result = trt_variant(
            variant, chosen[0] if chosen else "fp16", checkpoint, random_init=random_init, seed=seed, profile=profile,
            output=output, calib=calib, progress=status.update, workspace_gib=workspace, opt_level=opt_level,
            timing_cache=timing_cache, hardware_compat=hardware_compat,
            version_compatible=version_compatible or None, dla_core=dla_core, **_batch_range(batch),
        )
    m = result.metadata
    console.print(f"[green]wrote[/] {result.path} ({m['precision']}, {m['engine_bytes'] / 2**20:.1f} MiB, "
                  f"TensorRT {m['tensorrt']}, {m['gpu']['name']}, {m['build_seconds']} s)")


@app.command()
def profiles() -> None:
    """List the calibration profiles (profiles/*.yaml) with their variant, target and precisions."""
    from pe_export.precision.profiles import load_profile, profile_files

    table = Table(title="profiles")
    for column in ("name", "variant", "target", "batch", "precisions", "file"):
        table.add_column(column)
    for path in profile_files():
        p = load_profile(path)
        table.add_row(p.name, p.variant, p.export.target, f"{p.batch.min}/{p.batch.opt}/{p.batch.max}",
                      ", ".join(p.precisions), str(path))
    console.print(table)


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


@app.command()
def parity(
    variant: VariantOpt,
    artifacts: Annotated[Optional[list[Path]], typer.Argument(help="ONNX files or engines. Default: every artifact with a manifest under artifacts/<variant>/.")] = None,
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
    images: Annotated[Optional[Path], typer.Option(help="A folder of images (adds top-1 retrieval agreement).")] = None,
    synthetic: Annotated[int, typer.Option(help="Seeded synthetic inputs when no --images.", min=1)] = 8,
    threads: Annotated[Optional[int], typer.Option(help="Threads for onnxruntime CPU.", min=1)] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON (schema pe-export/parity/1).")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write the report as a Markdown table.")] = None,
) -> None:
    """Compare artifacts with the torch fp32 reference on the same inputs; exit 1 if one misses its threshold.

    Per artifact: token cosine (mean and min), pooled cosine, max abs, relative L2 and, with
    --images, top-1 retrieval agreement. Thresholds per precision: fp32 0.99999, fp16 0.999,
    bf16/int8/fp8 0.99 (token cosine mean).

    Example: pe-export parity -v L14 --random-init artifacts/PE-Lang-L14-448/*.onnx --images photos/
    """
    from pe_export.bench.parity import run_parity
    from pe_export.model import load_model

    _require_one_source(checkpoint, random_init)
    with console.status("loading weights"):
        loaded = load_model(variant, checkpoint, random_init=random_init, seed=seed)
    with _progress() as bar:
        task = bar.add_task("parity", total=len(artifacts) if artifacts else None)
        report = run_parity(loaded, artifacts or (), images, synthetic, threads=threads,
                            on_row=lambda row: bar.advance(task))
    _finish(report, json_path, md_path)
    if any(row.passed is False for row in report.results):
        raise typer.Exit(1)


@app.command()
def bench(
    variant: VariantOpt,
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
    backends: Annotated[str, typer.Option(help="Comma list: torch, torch-compile, onnxruntime, onnxruntime-cuda, onnxruntime-trt, tensorrt.")] = "torch,onnxruntime",
    precision: Annotated[str, typer.Option(help="Comma list: fp32, bf16, fp16, int8, fp8.")] = "fp32",
    batch: Annotated[str, typer.Option(help="Comma list of batch sizes, e.g. 1,8,32.")] = "1",
    warmup: Annotated[int, typer.Option(help="Untimed runs before timing.", min=0)] = 2,
    iters: Annotated[int, typer.Option(help="Timed runs per row.", min=1)] = 10,
    seconds: Annotated[Optional[float], typer.Option(help="Time each row for this long instead of --iters.")] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads for torch and onnxruntime.", min=1)] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda (torch backends; GPU timing with CUDA events).")] = "cpu",
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON (schema pe-export/latency/1).")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write the report as a Markdown table.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG of throughput against batch size.")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="A previous latency JSON to compare with.")] = None,
    max_regression: Annotated[float, typer.Option(help="With --baseline: allowed slow-down in percent.")] = 10.0,
    compare: Annotated[str, typer.Option(help="With --baseline: 'absolute' p50 times, or 'ratio' to torch fp32 in the same run (for noisy machines).")] = "absolute",
) -> None:
    """Measure latency (min/mean/p50/p90/p95/p99), throughput and peak memory per backend, precision and batch.

    Example: pe-export bench -v L14 --random-init --backends torch,onnxruntime --batch 1,4 --json lat.json
    """
    from pydantic import ValidationError

    from pe_export.bench.bench import BenchSettings, regressions, run_bench
    from pe_export.bench.report import load_report
    from pe_export.errors import UsageError
    from pe_export.model import load_model

    _require_one_source(checkpoint, random_init)
    try:
        settings = BenchSettings(
            backends=_csv(backends), precisions=_csv(precision), batches=[int(b) for b in _csv(batch)],
            warmup=warmup, iters=iters, seconds=seconds, threads=threads, device=device,
        )
    except (ValidationError, ValueError) as exc:
        raise UsageError(f"bad bench settings: {_first_error(exc)}") from None
    if compare not in ("absolute", "ratio"):
        raise UsageError("--compare takes 'absolute' or 'ratio'")
    past = _read_baseline(baseline, load_report) if baseline else None
    with console.status("loading weights"):
        loaded = load_model(variant, checkpoint, random_init=random_init, seed=seed)
    from pe_export.bench.bench import skipped_pairs

    rows = (len(settings.backends) * len(settings.precisions) - len(skipped_pairs(settings))) * len(settings.batches)
    with _progress() as bar:
        task = bar.add_task("rows", total=rows)
        report = run_bench(loaded, settings, on_row=lambda row: bar.advance(task), progress=lambda s: bar.update(task, description=s))
    _finish(report, json_path, md_path)
    if plot and report.results:
        from pe_export.bench.plot import plot_throughput

        plot_throughput(report, plot)
        console.print(f"plot: {plot}")
    if past is not None:
        slower = regressions(report, past, max_regression, compare)  # type: ignore[arg-type]
        for line in slower:
            console.print(f"[red]regressed[/] {line}", highlight=False)
        if slower:
            raise typer.Exit(1)
        console.print(f"[green]no regression[/] beyond {max_regression:g}% ({compare}) against {baseline}")


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg'].removeprefix('Value error, ')}"
    return str(exc)


def _read_baseline(path: Path, load_report):
    from pe_export.errors import UsageError

    try:
        return load_report(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot use {path} as a baseline: {_first_error(exc)}") from None


def _finish(report, json_path: Optional[Path], md_path: Optional[Path]) -> None:
    from pe_export.bench.report import to_markdown

    console.print(to_markdown(report), highlight=False)
    report.write(json_path, md_path)
    for path in (json_path, md_path):
        if path:
            console.print(f"wrote {path}")
    if report.interrupted:
        console.print("[yellow]interrupted[/]: the report holds the finished rows")
        raise typer.Exit(130)


def _require_one_source(checkpoint: Optional[str], random_init: bool) -> None:
    from pe_export.errors import UsageError

    if checkpoint and random_init:
        raise UsageError("give either --checkpoint or --random-init, not both")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; library errors become one red line and their exit code (a traceback with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="pe-export")
    except PeExportError as exc:
        if "--debug" in args:
            raise
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", soft_wrap=True, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
