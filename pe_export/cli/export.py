"""ONNX commands: `onnx` (export), `check` (lint for a runtime), `quantize` (a precision variant) and
`sensitivity` (which quantized sites cost parity)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer

from pe_export.cli.options import Choice, batch_sizes, flag, model_command
from pe_export.cli.output import console, print_table, stages
from pe_export.onnx.targets import DEFAULT_TARGET, TARGETS, Lowering
from pe_export.precisions import PRECISIONS
from pe_export.variants import OutputKind

if TYPE_CHECKING:
    from pe_export.source import ModelSource

TARGET = Choice("target", tuple(TARGETS))
LOWERING = Choice("lowering", tuple(get_args(Lowering)))
OUTPUT = Choice("features", tuple(get_args(OutputKind)))
QUANTIZED = Choice("precision", tuple([p.name for p in PRECISIONS.values() if p.kind != "reference"]))
SENSITIVITY_MODE = Choice("mode", ("alone", "kept"))


def _static_batch(value: str) -> Optional[int]:
    if value == "dynamic":
        return None
    sizes, ranged = batch_sizes(value)
    if ranged or len(sizes) > 1:
        raise typer.BadParameter("an ONNX file has one static batch size or a dynamic batch: give N or 'dynamic'")
    return sizes[0]


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
        Optional[str], OUTPUT.option("--features", help="What the model gives: tokens (default for Lang/Spatial), pooled (Core: attention-pooled and projected) or image_features (PLM: 256 projected tokens per tile).")
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
    parity = m.parity
    console.print(f"[green]wrote[/] {result.path} ({m.nodes} nodes, opset {m.opset['ai.onnx']}, "
                  f"{m.export_seconds:.1f} s, peak RSS {m.peak_rss_mb / 1024:.2f} GiB)")
    console.print(f"parity vs torch (onnxruntime CPU, batches {parity['batches']}): cosine min {parity['cosine_min']:.7f}, "
                  f"max abs {parity['max_abs']:.2e}")
    console.print(f"manifest: {result.manifest_path}")


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

    Example: pe-export check artifacts/PE-Lang-L14-448/PE-Lang-L14-448.trt11.onnx --target trt10.8
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
    from pe_export.pipeline.commands import quantize_variant

    with stages("checking the request") as progress:
        result = quantize_variant(source, precision, profile=profile, calib=calib, samples=samples, output=output,
                                  auto_exclude=auto_exclude, progress=progress)
    m, row = result.manifest, result.parity
    console.print(f"[green]wrote[/] {result.path} ({precision}, Q/DQ nodes {m.qdq_nodes['QuantizeLinear']}+"
                  f"{m.qdq_nodes['DequantizeLinear']}, {m.seconds} s)")
    if m.calibration:
        c = m.calibration
        console.print(f"calibration: {c['count']} samples from {c['source']} ({c['skipped']} unreadable skipped, "
                      f"sha256 {c['sha256'][:16]}), method {m.method}")
    if m.smoothing:
        sm = m.smoothing
        ratio = sm["largest_channel_over_median"]
        console.print(f"smoothing a={sm['alpha']} on {sm['pairs']} LayerNorm -> MatMul pairs: largest channel "
                      f"{ratio['before']}x the median before, {ratio['after']}x after")
    if row.passed is None:
        console.print(f"parity: {row.note}")
    else:
        console.print(f"parity vs torch fp32 (onnxruntime CPU): token cosine mean {row.cosine_mean:.5f} "
                      f"(min {row.cosine_min:.5f}), max abs {row.max_abs:.3g}, threshold {row.threshold}")
    if m.auto_exclude:
        _print_fallback(m.auto_exclude, m.exclusions["exclude"], precision)
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
    from pe_export.pipeline.commands import sensitivity_variant

    if plot:
        from pe_export.bench.plot import require_plotting

        require_plotting()
    with stages("checking the request") as progress:
        report = sensitivity_variant(source, precision, profile=profile, calib=calib, samples=samples, images=images,
                                     mode=mode, threads=threads, progress=progress)  # type: ignore[arg-type]
    console.print(", ".join(f"{name}: token cosine mean {f['cosine_mean']:.5f}" for name, f in report.baselines.items())
                  + f"; threshold {report.threshold}; {report.seconds} s", highlight=False)
    print_table("sensitivity", report.records(), False)
    for path, write in ((json_path, report.write_json), (md_path, lambda p: p.write_text(report.to_markdown()))):
        if path:
            write(path)
            console.print(f"wrote {path}")
    if plot:
        from pe_export.bench.plot import plot_sensitivity

        plot_sensitivity(report, plot)
        console.print(f"plot: {plot}")
