"""The `pe-export` command line: parses options, calls one library function, prints with rich."""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.status import Status
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from pe_export import __version__
from pe_export.errors import BadReport, PeExportError, UsageError
from pe_export.onnx.targets import DEFAULT_TARGET, TARGETS, Lowering
from pe_export.precision.profiles import HardwareCompat
from pe_export.precisions import PRECISIONS
from pe_export.report import CompareMode
from pe_export.runners import BACKENDS
from pe_export.runners.device import Device
from pe_export.runners.openvino import INFERENCE_PRECISION
from pe_export.serving import InstanceKind
from pe_export.variants import OutputKind

if TYPE_CHECKING:
    from pe_export.source import ModelSource
    from pe_export.report import Report
    from pe_export.serving.repository import ServingOptions

app = typer.Typer(
    name="pe-export",
    help="Export Meta's Perception Encoder (PE) vision towers to ONNX, precision variants, TensorRT engines and OpenVINO IR.",
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs are reflowed to the terminal, not broken at their source lines
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console()
err_console = Console(stderr=True)
# Typer raises click's exceptions, from click itself or from its own copy of click.
ParserError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

def flag(*names: str, **options: object) -> typer.models.OptionInfo:
    """An on/off option, shown in --help as a flag (no value to give)."""
    return typer.Option(*names, metavar="", **options)  # type: ignore[arg-type]


VariantOpt = Annotated[
    str, typer.Option("--variant", "-v", help="Variant name, alias (L14, G14) or timm name; see `pe-export variants`.")
]
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option(
        "--checkpoint",
        "-c",
        help="Weights: a local .pt/.pth/.bin/.safetensors file or hf://owner/repo/file. "
        "Default: the variant's file on the Hugging Face hub (`facebook/<name>`).",
    ),
]
RandomInitOpt = Annotated[bool, flag("--random-init", help="Deterministic random weights (demos, tests).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --random-init.")]


@dataclass(frozen=True)
class Choice:
    """A closed set of option values taken from the library's own table: listed in --help, and
    refused by the parser with the same words the library uses."""

    kind: str
    values: tuple[str, ...]

    def option(self, *names: str, help: str) -> typer.models.OptionInfo:
        return typer.Option(*names, parser=self.parse, metavar=f"[{'|'.join(self.values)}]", help=help)

    def parse(self, value: str) -> str:
        if value not in self.values:
            raise typer.BadParameter(f"unknown {self.kind} {value!r}; choose one of: {', '.join(self.values)}")
        return value


TARGET = Choice("target", tuple(TARGETS))
QUANTIZED = Choice("precision", tuple([p.name for p in PRECISIONS.values() if p.kind != "reference"]))
LOWERING = Choice("lowering", tuple(get_args(Lowering)))
OUTPUT = Choice("features", tuple(get_args(OutputKind)))
DEVICE = Choice("device", tuple(get_args(Device)))
COMPARE = Choice("comparison", tuple(get_args(CompareMode)))
INSTANCE_KIND = Choice("instance kind", tuple(get_args(InstanceKind)))
HARDWARE_COMPAT = Choice("hardware compatibility", tuple(get_args(HardwareCompat)))
OPENVINO_PRECISION = Choice("precision", tuple(INFERENCE_PRECISION))


def model_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the model-source options (--variant, --checkpoint, --random-init, --seed) and
    hand it one `ModelSource` as its `source` parameter (torch is imported only when a command runs)."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [p.replace(kind=keyword, annotation=eval(p.annotation, command.__globals__))  # noqa: S307 - our own annotations
           for p in inspect.signature(command).parameters.values() if p.name != "source"]
    required = [p for p in own if p.default is inspect.Parameter.empty]
    optional = [p for p in own if p.default is not inspect.Parameter.empty]
    parameters = [
        inspect.Parameter("variant", keyword, annotation=VariantOpt), *required,
        inspect.Parameter("checkpoint", keyword, annotation=CheckpointOpt, default=None),
        inspect.Parameter("random_init", keyword, annotation=RandomInitOpt, default=False),
        inspect.Parameter("seed", keyword, annotation=SeedOpt, default=0), *optional,
    ]

    @functools.wraps(command)
    def with_source(*, variant: str, checkpoint: Optional[str] = None, random_init: bool = False, seed: int = 0,
                    **options: object) -> None:
        from pe_export.source import ModelSource

        command(source=ModelSource(variant, checkpoint, random_init, seed), **options)

    del with_source.__wrapped__  # Typer reads the signature below, not the command's
    with_source.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    with_source.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_source


@dataclass
class CliState:
    """What the root options set for the whole run."""

    debug: bool = False


def _version(value: bool) -> None:
    if value:
        console.print(f"pe-export {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[bool, flag("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, flag("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    """Export PE vision towers (Core, Lang, Spatial) for edge and production runtimes."""
    if isinstance(ctx.obj, CliState):
        ctx.obj.debug = debug


def _print_table(title: str, records: list[dict], as_json: bool, shown: Optional[dict[str, Callable]] = None) -> None:
    """Records as JSON, or as a table that never cuts a cell: folded in a terminal, Markdown in a
    pipe or a log. `shown` formats a column's values for reading."""
    if as_json:
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        return
    columns = list(records[0]) if records else []
    rows = [[(shown or {}).get(c, str)(r[c]) for c in columns] for r in records]
    if console.is_terminal:
        table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False)
        for column in columns:
            table.add_column(column, no_wrap=True)
        for row in rows:
            table.add_row(*row)
        natural = sum(max(len(c), *(len(r[i]) for r in rows)) + 3 for i, c in enumerate(columns))
        if natural <= console.width:
            console.print(table)
            return
        for row in rows:  # too narrow for the table: one record a paragraph, nothing cut
            details = ", ".join(f"{c} {v}" for c, v in zip(columns[1:], row[1:]) if v)
            console.print(f"[bold]{escape(row[0])}[/]  {escape(details)}", highlight=False)
    else:
        lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}", *(f"| {' | '.join(r)} |" for r in rows)]
        sys.stdout.write("\n".join(lines) + "\n")


JsonOpt = Annotated[bool, flag("--json", help="Print the data as JSON.")]


@app.command()
def variants(as_json: JsonOpt = False) -> None:
    """List every PE vision variant with its size and cost."""
    from pe_export.variants import VARIANTS

    records = [{"name": v.name, "alias": v.alias or "", "family": v.family, "image": v.image_size,
                "patch": v.patch_size, "tokens": v.tokens, "width": v.width, "layers": v.layers, "heads": v.heads,
                "parameters": v.parameters, "GMACs": round(v.gmacs, 1), "default output": v.default_output}
               for v in VARIANTS]
    _print_table("PE vision variants", records, as_json, {"parameters": "{:,}".format})


@app.command()
@model_command
def info(source: ModelSource) -> None:
    """Load a variant's weights with a strict key check and show its configuration.

    Example: pe-export info --variant L14 --checkpoint PE-Lang-L14-448.pt
    """
    from pe_export.model.info import describe

    result = describe(source)
    table = Table(show_header=False, title=result.variant.name)
    table.add_column(style="bold")
    table.add_column()
    for key, value in result.rows():
        table.add_row(key, value)
    console.print(table)


BATCH_SYNTAX = "N, a list N,N,N or a range MIN:OPT:MAX"


def _batch_sizes(value: str) -> tuple[list[int], bool]:
    """The one batch syntax of every command: N, N,N,N or MIN:OPT:MAX; (sizes, given as a range)."""
    ranged = ":" in value
    parts = [p.strip() for p in value.split(":" if ranged else ",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts) or (ranged and len(parts) != 3):
        raise typer.BadParameter(f"{value!r}: batch sizes must be positive numbers, as {BATCH_SYNTAX}")
    return [int(p) for p in parts], ranged


def _static_batch(value: str) -> Optional[int]:
    if value == "dynamic":
        return None
    sizes, ranged = _batch_sizes(value)
    if ranged or len(sizes) > 1:
        raise typer.BadParameter("an ONNX file has one static batch size or a dynamic batch: give N or 'dynamic'")
    return sizes[0]


def _profile_range(value: str) -> dict:
    sizes, ranged = _batch_sizes(value)
    if not ranged and len(sizes) > 1:
        raise typer.BadParameter("an engine's optimization profile is N or MIN:OPT:MAX, e.g. 1:8:32")
    low, opt, high = sizes if ranged else sizes * 3
    return {"batch_min": low, "batch_opt": opt, "batch_max": high}


def _bench_sizes(value: str) -> list[int]:
    return sorted(set(_batch_sizes(value)[0]))


@app.command("onnx")
@model_command
def onnx_export(
    source: ModelSource,
    output: Annotated[
        Optional[Path], typer.Option("--output-path", "-o", help="The .onnx file to write. Default: `artifacts/<variant>/<variant>.<target>[.tags].onnx`")
    ] = None,
    target: Annotated[
        str, TARGET.option(help="Runtime preset: trt11, trt10.15 (opset 23, fused RoPE and attention), trt10, jetson (opset 17, decomposed), ort.")
    ] = DEFAULT_TARGET,
    opset: Annotated[Optional[int], typer.Option(help="ONNX opset; default from the target.")] = None,
    rope: Annotated[Optional[str], LOWERING.option(help="RoPE as one RotaryEmbedding node (fused, opset 23) or plain ops (decomposed).")] = None,
    attention: Annotated[Optional[str], LOWERING.option(help="Attention as one Attention node (fused, opset 23) or MatMul-Softmax-MatMul (decomposed).")] = None,
    batch: Annotated[str, typer.Option(help="'dynamic' (the default) or one static size N.")] = "dynamic",
    features: Annotated[
        Optional[str], OUTPUT.option("--features", help="What the model gives: tokens (default for Lang/Spatial) or pooled (Core: attention-pooled and projected).")
    ] = None,
    layer: Annotated[int, typer.Option(help="Take the tokens after this block (negative counts from the end).")] = -1,
    strip_cls: Annotated[bool, flag("--strip-cls", help="Drop the class token from the tokens (what PLM feeds its LLM).")] = False,
    simplify: Annotated[bool, flag("--simplify/--no-simplify", help="Run onnxslim and keep its graph when it is smaller (slow on big models; the exporter's own optimizer already folds constants).")
    ] = False,
) -> None:
    """Export a variant to ONNX at its native size, proven against torch before it is written.

    Examples:

    - pe-export onnx --variant L14 --random-init
    - pe-export onnx --variant L14 --checkpoint PE-Lang-L14-448.pt --target jetson --batch 1
    - pe-export onnx --variant PE-Core-L14-336 --target ort -o core.onnx
    """
    from pe_export.onnx.export import ExportOptions, export_variant

    options = ExportOptions(
        target=target, opset=opset, rope=rope, attention=attention, batch=_static_batch(batch),
        output=features, layer=layer, strip_cls=strip_cls, simplify=simplify,
    )
    with stages("checking options") as progress:
        result = export_variant(source, options=options, output=output, progress=progress)
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
    target: Annotated[str, typer.Option(
        metavar=f"[{'|'.join(TARGETS)}|trtMAJOR.MINOR]",
        help="The runtime to check against: a target, or one TensorRT release such as trt10.8.")] = DEFAULT_TARGET,
) -> None:
    """Lint an ONNX file for a target runtime; exit 1 if anything in it cannot run there.

    Follows the ONNX parser of each TensorRT release (highest opset, RotaryEmbedding from 10.15,
    Attention from 10.14 and single-output only), and flags com.microsoft and other non-standard
    ops, If/Loop, complex types and missing external data. Many nodes with one problem are one line.
    """
    from pe_export.onnx.check import check_onnx

    report = check_onnx(model, target)
    if report.ok:
        console.print(f"[green]ok[/] {report.summary()}")
        return
    for line in report.lines():
        console.print(f"[red]x[/] {line}", highlight=False, soft_wrap=True)
    console.print(f"[bold red]{len(report.findings)} problem(s)[/] for {report.target.runtime} in {model}")
    raise typer.Exit(1)


@app.command()
@model_command
def quantize(
    source: ModelSource,
    precision: Annotated[str, QUANTIZED.option(help="fp16 or bf16 (mixed precision), int8 or fp8 (explicit Q/DQ from calibration).")],
    profile: Annotated[Optional[str], typer.Option(help="A profile name (see `pe-export profiles`) or a YAML file.")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration images: a folder, a glob ('photos/**/*.jpg') or 'synthetic'. Overrides the profile.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Calibration sample count. Overrides the profile.", min=1)] = None,
    output: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="The .onnx to write. Default: beside the fp32 ONNX, named `.<precision>.onnx`")] = None,
    auto_exclude: Annotated[bool, flag("--auto-exclude", help="int8/fp8: on a parity miss, keep the fewest most sensitive sites in high precision until it passes (ranked by sensitivity, proven by real parity runs); prints the exclusions for the profile.")] = False,
) -> None:
    """Make an FP16/BF16 or INT8/FP8 ONNX from the fp32 export (made or reused), proven against torch fp32.

    With real weights, int8/fp8 calibrate on the images --calib names; --calib synthetic calibrates
    on noise (demos only).

    Example: pe-export quantize -v L14 -c PE-Lang-L14-448.pt --precision int8 --profile pe-lang-l14-datacenter --calib photos/
    """
    from pe_export.precision.quantize import quantize_variant

    with stages("checking the request") as progress:
        result = quantize_variant(source, precision, profile=profile, calib=calib, samples=samples, output=output,
                                  auto_exclude=auto_exclude, progress=progress)
    m, row = result.manifest, result.parity
    console.print(f"[green]wrote[/] {result.path} ({precision}, Q/DQ nodes {m['qdq_nodes']['QuantizeLinear']}+"
                  f"{m['qdq_nodes']['DequantizeLinear']}, {m['seconds']} s)")
    if m["calibration"]:
        c = m["calibration"]
        console.print(f"calibration: {c['count']} samples from {c['source']} ({c['skipped']} unreadable skipped, "
                      f"sha256 {c['sha256'][:16]}), method {m['method']}")
    if m.get("smoothing"):
        sm = m["smoothing"]
        ratio = sm["largest_channel_over_median"]
        console.print(f"smoothing a={sm['alpha']} on {sm['pairs']} LayerNorm -> MatMul pairs: largest channel "
                      f"{ratio['before']}x the median before, {ratio['after']}x after")
    if row.passed is None:
        console.print(f"parity: {row.note}")
    else:
        console.print(f"parity vs torch fp32 (onnxruntime CPU): token cosine mean {row.cosine_mean:.5f} "
                      f"(min {row.cosine_min:.5f}), max abs {row.max_abs:.3g}, threshold {row.threshold}")
    if m.get("auto_exclude"):
        _print_fallback(m["auto_exclude"], m["exclusions"]["exclude"], precision)
    elif auto_exclude:
        console.print("auto-exclude: not needed, every site quantized passes")


def _print_fallback(fallback: dict, profile_exclude: list[str], precision: str) -> None:
    """What the automatic fallback kept in high precision, what it cost, and the profile lines that make it again."""
    runs = len(fallback["tried"])
    console.print(f"auto-exclude: kept {len(fallback['excluded'])} of {fallback['sites']} sites in high precision "
                  f"({100 * fallback['excluded_work_share']:.1f}% of the quantized GEMM work), "
                  f"{fallback['seconds']} s (ranking {fallback['ranking_seconds']} s, {runs} parity run{'s' * (runs > 1)})")
    patterns = ", ".join(f"'{p}'" for p in [*profile_exclude, *fallback["exclude_patterns"]])
    sys.stdout.write(f"profile lines:\nquantization:\n  {precision}:\n    exclude: [{patterns}]\n")


SENSITIVITY_MODE = Choice("mode", ("alone", "kept"))


@app.command()
@model_command
def sensitivity(
    source: ModelSource,
    precision: Annotated[str, Choice("precision", ("int8", "fp8")).option(help="The Q/DQ precision whose sites to rank.")],
    profile: Annotated[Optional[str], typer.Option(help="A profile name or YAML file: calibration, op types, exclusions.")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration images: a folder, a glob or 'synthetic'. Overrides the profile.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Calibration sample count. Overrides the profile.", min=1)] = None,
    images: Annotated[int, typer.Option(help="Seeded inputs each configuration is scored on (one image's tokens rank the sites as well as two).", min=1)] = 1,
    mode: Annotated[str, SENSITIVITY_MODE.option(help="alone: each site quantized alone; kept: each site alone in high precision, the rest quantized.")] = "alone",
    threads: Annotated[Optional[int], typer.Option(help="Threads for onnxruntime CPU.", min=1)] = None,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the ranking as JSON (schema pe-export/sensitivity/1).")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write the ranking as a Markdown table.")] = None,
    plot: Annotated[Optional[Path], typer.Option(help="Write a PNG bar chart of the most damaging sites.")] = None,
) -> None:
    """Rank every quantized site (a GEMM or convolution with its Q/DQ pairs) by the damage it does to the output.

    All configurations are emulated in one onnxruntime session (a mask per sample turns each
    site's Q/DQ on), scored by token cosine and max abs against torch fp32.

    Example: pe-export sensitivity -v L14 -c PE-Lang-L14-448.pt --precision int8 --calib photos/ --json sens.json --plot sens.png
    """
    from pe_export.precision.quantize import sensitivity_variant

    if plot:
        from pe_export.bench.plot import require_plotting

        require_plotting()
    with stages("checking the request") as progress:
        report = sensitivity_variant(source, precision, profile=profile, calib=calib, samples=samples, images=images,
                                     mode=mode, threads=threads, progress=progress)  # type: ignore[arg-type]
    console.print(", ".join(f"{name}: token cosine mean {f['cosine_mean']:.5f}" for name, f in report.baselines.items())
                  + f"; threshold {report.threshold}; {report.seconds} s", highlight=False)
    _print_table("sensitivity", report.records(), False)
    for path, write in ((json_path, report.write_json), (md_path, lambda p: p.write_text(report.to_markdown()))):
        if path:
            write(path)
            console.print(f"wrote {path}")
    if plot:
        from pe_export.bench.plot import plot_sensitivity

        plot_sensitivity(report, plot)
        console.print(f"plot: {plot}")


@app.command()
@model_command
def trt(
    source: ModelSource,
    fp16: Annotated[bool, flag("--fp16", help="FP16 mixed precision (the default).")] = False,
    bf16: Annotated[bool, flag("--bf16", help="BF16 mixed precision.")] = False,
    int8: Annotated[bool, flag("--int8", help="INT8 explicit Q/DQ from the profile's calibration.")] = False,
    fp8: Annotated[bool, flag("--fp8", help="FP8 explicit Q/DQ (Ada, Hopper and later).")] = False,
    fp32: Annotated[bool, flag("--fp32", help="Full fp32.")] = False,
    profile: Annotated[Optional[str], typer.Option(help="Profile name or YAML file: export options, calibration, TensorRT settings.")] = None,
    output: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="The engine file. Default: beside its ONNX, .engine")] = None,
    batch: Annotated[Optional[str], typer.Option(help="The optimization profile: N or MIN:OPT:MAX, e.g. 1:8:32. Default: the profile's.")] = None,
    workspace: Annotated[Optional[float], typer.Option(help="Workspace limit in GiB.")] = None,
    opt_level: Annotated[Optional[int], typer.Option(help="Builder optimization level 0-5.", min=0, max=5)] = None,
    timing_cache: Annotated[Optional[Path], typer.Option(help="Timing cache to load and save (faster rebuilds).")] = None,
    hardware_compat: Annotated[Optional[str], HARDWARE_COMPAT.option(help="'ampere+' for an engine that runs on any Ampere or newer GPU.")] = None,
    version_compatible: Annotated[bool, flag("--version-compatible", help="An engine later TensorRT versions can load.")] = False,
    dla_core: Annotated[Optional[int], typer.Option(help="Jetson: run on this DLA core with GPU fallback.", min=0)] = None,
    tf32: Annotated[bool, flag("--tf32", help="--fp32: let TensorRT compute in TF32 (faster, misses the fp32 parity gate).")] = False,
    calib: Annotated[Optional[str], typer.Option(help="Calibration images for --int8/--fp8 (folder, glob or 'synthetic').")] = None,
) -> None:
    """Build a strongly typed TensorRT engine; its precision comes from the ONNX graph.

    --int8 means: make (or reuse) the INT8 Q/DQ ONNX from the profile's calibration, then build.
    Without TensorRT or a GPU: one line saying what is missing, exit code 3, nothing written.

    Example: pe-export trt -v L14 --checkpoint PE-Lang-L14-448.pt --int8 --profile pe-lang-l14-datacenter
    """
    from pe_export.trt.engine import trt_variant

    chosen = [name for name, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8), ("fp8", fp8), ("fp32", fp32)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one precision, not {' and '.join('--' + c for c in chosen)}")
    with stages("checking TensorRT and the GPU") as progress:
        result = trt_variant(
            source, chosen[0] if chosen else "fp16", profile=profile, output=output, calib=calib,
            progress=progress, workspace_gib=workspace, opt_level=opt_level, timing_cache=timing_cache,
            hardware_compat=hardware_compat, version_compatible=version_compatible or None,
            dla_core=dla_core, tf32=tf32 or None, **(_profile_range(batch) if batch else {}),
        )
    m = result.metadata
    console.print(f"[green]wrote[/] {result.path} ({m['precision']}, {m['engine_bytes'] / 2**20:.1f} MiB, "
                  f"TensorRT {m['tensorrt']}, {m['gpu']['name']}, {m['build_seconds']} s)")
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False, soft_wrap=True)


@app.command("openvino")
@model_command
def openvino_ir(
    source: ModelSource,
    precision: Annotated[Optional[str], OPENVINO_PRECISION.option(help="fp32, bf16 (where the CPU has bf16 units) or int8 (from the Q/DQ ONNX). Default: the profile's OpenVINO precision, else fp32.")] = None,
    profile: Annotated[Optional[str], typer.Option(help="Profile name or YAML file: export options, calibration, parity thresholds. Default: the onnxruntime export, default calibration.")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration images for int8 (folder, glob or 'synthetic'). Overrides the profile.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Calibration sample count. Overrides the profile.", min=1)] = None,
    output: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="The .xml to write (the .bin goes beside it). Default: beside the fp32 ONNX, named `.<precision>.xml`")] = None,
) -> None:
    """Write an OpenVINO IR (.xml/.bin) from the fp32 or int8 Q/DQ ONNX (made or reused), proven on OpenVINO
    against torch fp32 before it is written.

    fp32 computes in f32; bf16 is the fp32 graph compiled for the CPU's bf16 units (fp16 weights in
    the file); int8 runs the Q/DQ GEMMs in int8 and the rest at OpenVINO's default for the CPU (bf16
    where it has it). Without OpenVINO, or bf16 on a CPU without bf16 units: exit code 3, nothing written.

    Example: pe-export openvino -v L14 --checkpoint PE-Lang-L14-448.pt --profile pe-lang-l14-cpu-edge
    """
    from pe_export.openvino.ir import openvino_variant

    with console.status("checking the request") as status:
        result = openvino_variant(source, precision, profile=profile, calib=calib, samples=samples, output=output,
                                  progress=status.update)
    m, row = result.manifest, result.parity
    size = sum(f["bytes"] for f in m["files"].values()) / 2**20
    console.print(f"[green]wrote[/] {result.path} ({m['precision']}, float ops in {m['inference_precision']}, "
                  f"{size:.1f} MiB, OpenVINO {m['versions']['openvino']}, {m['seconds']} s, "
                  f"peak RSS {m['peak_rss_mb'] / 1024:.2f} GiB)")
    console.print(f"parity vs torch fp32 (OpenVINO CPU): token cosine mean {row.cosine_mean:.5f} "
                  f"(min {row.cosine_min:.5f}), max abs {row.max_abs:.3g}, threshold {row.threshold}")


ModelNameOpt = Annotated[Optional[str], typer.Option(help="Model name. Default: `<variant>-<precision>-<onnx|trt>`.")]
MaxBatchOpt = Annotated[Optional[int], typer.Option(help="Largest batch Triton forms. Default: the engine's profile maximum, 8 for ONNX.", min=1)]
PreferredOpt = Annotated[Optional[str], typer.Option(help="Preferred batch sizes of dynamic batching, e.g. 4,8. Default: the engine's opt and max.")]
QueueDelayOpt = Annotated[int, typer.Option(help="How long dynamic batching waits to fill a batch, in microseconds.", min=0)]
InstancesOpt = Annotated[int, typer.Option(help="Model instances.", min=1)]
ImagesOpt = Annotated[bool, flag("--images", help="Add `<name>_images`, an ensemble that takes one encoded image file "
                                 "(JPEG, PNG, ...) as a UINT8 tensor and preprocesses it exactly as at inference.")]


def _serving_options(name: Optional[str], max_batch: Optional[int], preferred: Optional[str], queue_delay_us: int,
                     kind: str, instances: int, tensorrt_accelerator: bool = False, images: bool = False) -> ServingOptions:
    from pydantic import ValidationError

    from pe_export.serving.repository import ServingOptions

    try:
        return ServingOptions(name=name, max_batch_size=max_batch, preferred_batch_sizes=_bench_sizes(preferred) if preferred else [],
                              max_queue_delay_us=queue_delay_us, instance_kind=kind, instances=instances,
                              tensorrt_accelerator=tensorrt_accelerator, images=images)
    except ValidationError as exc:
        raise UsageError(f"bad serving options: {_first_error(exc)}") from None


@app.command()
def triton(
    artifact: Annotated[Path, typer.Argument(help="An ONNX file (any precision) or a TensorRT engine made by pe-export.")],
    repository: Annotated[Path, typer.Option("--repository", "-r", help="The model repository folder.")] = Path("model_repository"),
    name: ModelNameOpt = None,
    max_batch: MaxBatchOpt = None,
    preferred: PreferredOpt = None,
    queue_delay_us: QueueDelayOpt = 100,
    kind: Annotated[str, INSTANCE_KIND.option(help="Where ONNX instances run (engines always run on the GPU).")] = "gpu",
    instances: InstancesOpt = 1,
    tensorrt_accelerator: Annotated[bool, flag("--tensorrt-accelerator", help="ONNX on GPU: let onnxruntime's TensorRT execution provider run it.")] = False,
    images: ImagesOpt = False,
) -> None:
    """Write a Triton Inference Server model repository for an artifact: config.pbtxt (inputs and
    outputs from the manifest, dynamic batching, instance groups, the variant and precision as
    parameters) and the model file as version 1.

    Example: pe-export triton artifacts/PE-Lang-L14-448/PE-Lang-L14-448.ort.int8.onnx --kind cpu -r models/
    """
    from pe_export.serving.repository import model_repository

    options = _serving_options(name, max_batch, preferred, queue_delay_us, kind, instances, tensorrt_accelerator, images)
    result = model_repository(artifact, repository, options)
    console.print(f"[green]wrote[/] {result.model_dir}/ (config.pbtxt, version 1)"
                  + (f" and its {result.model_dir.name}_images ensemble (needs pe-export in Triton's Python)" if images else ""))
    console.print(result.text, highlight=False, markup=False)


@app.command()
def serve(
    artifact: Annotated[Path, typer.Argument(help="An ONNX file (any precision) or a TensorRT engine made by pe-export.")],
    variant: Annotated[Optional[str], typer.Option("--variant", "-v", help="Refuse an artifact made for another variant.")] = None,
    name: ModelNameOpt = None,
    http_port: Annotated[int, typer.Option(help="HTTP port (KServe v2 protocol, health at /v2/health/ready).", min=1, max=65535)] = 8000,
    grpc_port: Annotated[int, typer.Option(help="gRPC port.", min=1, max=65535)] = 8001,
    metrics_port: Annotated[int, typer.Option(help="Prometheus metrics port.", min=1, max=65535)] = 8002,
    device: Annotated[str, DEVICE.option(help="Where ONNX runs: onnxruntime on the CPU or on CUDA (engines always run on the GPU, with TensorRT).")] = "cpu",
    instances: InstancesOpt = 1,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads per model instance. Default: onnxruntime's (all cores).", min=1)] = None,
    max_batch: MaxBatchOpt = None,
    preferred: PreferredOpt = None,
    queue_delay_us: QueueDelayOpt = 100,
    images: ImagesOpt = False,
    tritonserver: Annotated[Optional[Path], typer.Option(help="A tritonserver binary (e.g. /opt/tritonserver/bin/tritonserver). Default: $TRITONSERVER, else the server nvidia-pytriton bundles.")] = None,
) -> None:
    """Serve an artifact on a real Triton Inference Server here, until Ctrl-C or SIGTERM.

    The model runs on Triton's python backend through pe-export's runners (the numbers `pe-export
    parity` checks), with dynamic batching; HTTP, gRPC and metrics on the given ports. Everything is
    checked before the server starts; stopping it leaves no process, file or shared memory behind.
    Triton: `pip install --no-deps nvidia-pytriton==0.7.0` (its numpy<2 pin concerns only its own
    Python API, which pe-export does not use) or any install via --tritonserver. For a Triton
    deployment elsewhere, `pe-export triton` writes the repository for its native backends.

    Example: pe-export serve artifacts/PE-Spatial-T16-512/PE-Spatial-T16-512.ort.onnx --max-batch 8
    """
    import signal
    import threading

    from pydantic import ValidationError

    from pe_export.serving.server import ServerSettings, running_server

    options = _serving_options(name, max_batch, preferred, queue_delay_us, "gpu" if device == "cuda" else "cpu", instances,
                               images=images)
    try:
        settings = ServerSettings(http_port=http_port, grpc_port=grpc_port, metrics_port=metrics_port, threads=threads)
    except ValidationError as exc:
        raise UsageError(f"bad server settings: {_first_error(exc)}") from None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.ExitStack() as running:
        with console.status("starting Triton and loading the model"):
            server = running.enter_context(running_server(artifact, options, settings, variant, tritonserver))
        console.print(f"[green]serving[/] {server.model} ({artifact.name}) on Triton; Ctrl-C or SIGTERM stops it")
        for what, url in server.urls.items():
            console.print(f"  {what:<8} {url}", highlight=False)
        console.print(f"  log      {server.log}", highlight=False)
        server.wait(stop)
    console.print("stopped", highlight=False)


def _levels(value: str) -> list[int]:
    parts = _csv(value)
    if not parts or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise typer.BadParameter(f"{value!r}: concurrency levels are positive numbers, e.g. 1,4,16")
    return sorted({int(p) for p in parts})


@app.command()
def loadtest(
    url: Annotated[str, typer.Option(help="The server's HTTP address, on this machine.")] = "http://localhost:8000",
    model: Annotated[Optional[str], typer.Option(help="The model to load. Default: the server's only model.")] = None,
    concurrency: Annotated[str, typer.Option(help="Concurrent clients per level, e.g. 1,4,16.")] = "1,4,16",
    seconds: Annotated[float, typer.Option(help="Timed seconds per level.", min=0.1)] = 10.0,
    batch: Annotated[int, typer.Option(help="Images per request.", min=1)] = 1,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the report as JSON (schema pe-export/load/1).")] = None,
    md_path: Annotated[Optional[Path], typer.Option("--md", help="Write the report as a Markdown table.")] = None,
) -> None:
    """Load a served model as a serving team does: closed-loop clients per concurrency level.

    Per level: throughput (answered images per second), p50/p90/p99 latency of answered requests,
    and the errors; exit 1 when a request failed. Local servers only (localhost, 127.0.0.1, ::1).

    Example: pe-export loadtest --url http://localhost:8000 --concurrency 1,4,16 --seconds 10
    """
    from pydantic import ValidationError

    from pe_export.serving.loadtest import LoadSettings, run_loadtest

    try:
        settings = LoadSettings(url=url, model=model, concurrency=_levels(concurrency), seconds=seconds, batch=batch)
    except ValidationError as exc:
        raise UsageError(f"bad load test settings: {_first_error(exc)}") from None
    with _progress() as bar:
        task = bar.add_task("concurrency levels", total=len(settings.concurrency))
        report = run_loadtest(settings, on_row=lambda row: bar.advance(task))
    _finish(report, json_path, md_path)
    failed = sum(row.errors for row in report.results)  # type: ignore[union-attr]
    if failed:
        console.print(f"[red]{failed} request(s) failed[/]; first: {report.results[0].first_error}", highlight=False)
        raise typer.Exit(1)


@app.command()
def profiles(as_json: JsonOpt = False) -> None:
    """List the calibration profiles with their variant, target, precisions and where each comes from
    (shipped with pe-export, or a ./profiles folder that overrides a shipped file of the same name)."""
    from pe_export.precision.profiles import load_profile, profile_sources

    records = []
    for path, origin in profile_sources():
        p = load_profile(path)
        records.append({"name": p.name, "variant": p.variant, "target": p.export.target,
                        "batch": [p.batch.min, p.batch.opt, p.batch.max], "precisions": p.precisions,
                        "deploys": f"{p.deploy.runtime} {p.deploy.precision}" if p.deploy else "",
                        "from": origin, "file": str(path)})
    _print_table("profiles", records, as_json, {"batch": lambda b: "/".join(map(str, b)), "precisions": ", ".join})


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def _progress() -> Progress:
    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), console=console, transient=True)


@app.command()
@model_command
def parity(
    source: ModelSource,
    artifacts: Annotated[Optional[list[Path]], typer.Argument(help="ONNX files, OpenVINO IR (.xml) or engines. Default: every artifact with a manifest under `artifacts/<variant>/`.")] = None,
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
    from pe_export.bench.parity import (artifact_backends, artifacts_to_score, default_artifacts, parity_inputs,
                                        run_parity)
    from pe_export.model import load_source
    from pe_export.variants import get_variant

    # backends, inputs and artifacts are all checked before the weights load
    variant = get_variant(source.variant)
    chosen = _csv(backends or "")
    paths = list(artifacts or ()) or default_artifacts(variant.name)
    pairs = artifact_backends(paths, chosen)
    inputs = parity_inputs(variant, images, synthetic)
    paths = artifacts_to_score(variant, paths)
    with stages("loading weights"):
        loaded = load_source(source)
    with _progress() as bar:
        task = bar.add_task("parity", total=len(pairs))
        report = run_parity(loaded, paths, threads=threads, on_row=lambda row: bar.advance(task), inputs=inputs,
                            backends=chosen)
    _finish(report, json_path, md_path)
    if any(row.passed is False for row in report.results):
        raise typer.Exit(1)


parity.__doc__ = (parity.__doc__ or "").replace(
    "THRESHOLDS", ", ".join(f"{p.name} {p.threshold}" for p in PRECISIONS.values()))


@app.command()
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

    from pe_export.bench.bench import BenchSettings, check_request, regressions, run_bench, skipped_pairs
    from pe_export.bench.plot import plot_throughput, require_plotting
    from pe_export.model import load_source
    from pe_export.report import load_report

    try:
        settings = BenchSettings(
            backends=_csv(backends), precisions=_csv(precision), batches=_bench_sizes(batch),
            warmup=warmup, iters=iters, seconds=seconds, threads=threads, device=device, cuda_graph=cuda_graph,
            profile=profile,
            interleave=interleave,
        )
    except (ValidationError, ValueError) as exc:
        raise UsageError(f"bad bench settings: {_first_error(exc)}") from None
    check_request(settings)
    if plot:
        require_plotting()
    past = _baseline(baseline, load_report) if baseline else None
    with stages("loading weights"):
        loaded = load_source(source)
    rows = (len(settings.backends) * len(settings.precisions) - len(skipped_pairs(settings))) * len(settings.batches)
    with _progress() as bar:
        task = bar.add_task("rows", total=rows)
        report = run_bench(loaded, settings, on_row=lambda row: bar.advance(task), progress=lambda s: bar.update(task, description=s))
    _finish(report, json_path, md_path)
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


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg'].removeprefix('Value error, ')}"
    return str(exc)


def _baseline(path: Path, load_report: Callable[[Path], Report]) -> Report:
    try:
        return load_report(path)
    except BadReport as exc:
        raise UsageError(f"cannot use {path} as a baseline: {exc}") from None


class _Stages:
    """The steps of a long command: the current one on a spinner, each finished one as a line with
    its time, so that a terminal, a pipe and a log all show what was done and how long it took.
    A step "name: detail" followed by "name: other detail" (e.g. images done) updates in place."""

    def __init__(self, status: Status):
        self.status = status
        self.step: Optional[str] = None
        self.started = 0.0

    def __call__(self, step: str) -> None:
        same = self.step is not None and ":" in step and step.split(":")[0] == self.step.split(":")[0]
        if not same:
            self.finish()
            self.started = time.perf_counter()
        self.step = step
        self.status.update(escape(step))

    def finish(self) -> None:
        if self.step is not None:
            seconds = time.perf_counter() - self.started
            console.print(f"[green]✓[/] {escape(self.step)} [dim]({seconds:.1f} s)[/]", highlight=False, soft_wrap=True)
        self.step = None


@contextlib.contextmanager
def stages(first: str) -> Iterator[Callable[[str], None]]:
    """Report a command's steps (see _Stages); the last one is marked done only when all went well."""
    with console.status(escape(first)) as status:
        steps = _Stages(status)
        steps(first)
        yield steps
        steps.finish()


def _finish(report: Report, json_path: Optional[Path], md_path: Optional[Path]) -> None:
    from pe_export.report import to_markdown

    console.print(to_markdown(report), highlight=False)
    report.write(json_path, md_path)
    for path in (json_path, md_path):
        if path:
            console.print(f"wrote {path}")
    if report.interrupted:
        console.print("[dim]note:[/] the report holds the rows finished before the interruption")
        raise typer.Exit(130)


class _Notes(logging.Handler):
    """The library's notices (e.g. space freed from killed runs) as lines of output."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[dim]note:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Every error is one red line and its exit code (a traceback with --debug);
    Ctrl-C exits with 130 (Typer's own handling)."""
    library_log = logging.getLogger("pe_export")
    if not any(isinstance(h, _Notes) for h in library_log.handlers):
        library_log.addHandler(_Notes())
        library_log.setLevel(logging.INFO)
    state = CliState()
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        code = app(args=args, prog_name="pe-export", obj=state, standalone_mode=False)
    except ParserError as exc:  # bad options: the parser's own message, on one line
        where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        _error(exc.format_message() + where)
        code = exc.exit_code
    except PeExportError as exc:
        if state.debug:
            raise
        _error(str(exc))
        code = exc.exit_code
    if code == 130:
        _error("interrupted")
    raise SystemExit(code or 0)


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)


if __name__ == "__main__":
    main()
