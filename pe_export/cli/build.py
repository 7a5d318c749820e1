"""Runtime artifacts: `trt` (a TensorRT engine) and `openvino` (an OpenVINO IR) from the ONNX, and `executorch`
(an on-device program) from the weights."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional, get_args

import typer

from pe_export.cli.options import Choice, batch_sizes, flag, model_command
from pe_export.cli.output import console, stages
from pe_export.errors import UsageError
from pe_export.precision.profiles import HardwareCompat
from pe_export.edge.spec import DELEGATES, EXECUTORCH_PRECISIONS
from pe_export.runners.openvino import INFERENCE_PRECISION

if TYPE_CHECKING:
    from pe_export.source import ModelSource

HARDWARE_COMPAT = Choice("hardware compatibility", tuple(get_args(HardwareCompat)))
OPENVINO_PRECISION = Choice("precision", tuple(INFERENCE_PRECISION))
EXECUTORCH_PRECISION = Choice("precision", EXECUTORCH_PRECISIONS)
DELEGATE = Choice("delegate", DELEGATES)


def _profile_range(value: str) -> dict:
    sizes, ranged = batch_sizes(value)
    if not ranged and len(sizes) > 1:
        raise typer.BadParameter("an engine's optimization profile is N or MIN:OPT:MAX, e.g. 1:8:32")
    low, opt, high = sizes if ranged else sizes * 3
    return {"batch_min": low, "batch_opt": opt, "batch_max": high}


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
    layout: Annotated[Optional[tuple[str, Path]], typer.Option(metavar="trtllm DIR", help="Write the engine in TensorRT-LLM's multimodal layout: DIR/vision/model.engine (tensors input -> encoder_output) and DIR/vision/config.json.")] = None,
) -> None:
    """Build a strongly typed TensorRT engine; its precision comes from the ONNX graph.

    --int8 means: make (or reuse) the INT8 Q/DQ ONNX from the profile's calibration, then build.
    Without TensorRT or a GPU: one line saying what is missing, exit code 3, nothing written.

    Examples:

        pe-export trt -v L14 --checkpoint PE-Lang-L14-448.pt --int8 --profile pe-lang-l14-datacenter

        pe-export trt -v PLM-3B -c Perception-LM-3B/ --profile pe-plm-3b-datacenter --layout trtllm engines/plm-3b
    """
    from pe_export.pipeline.commands import trt_variant

    chosen = [name for name, on in (("fp16", fp16), ("bf16", bf16), ("int8", int8), ("fp8", fp8), ("fp32", fp32)) if on]
    if len(chosen) > 1:
        raise UsageError(f"choose one precision, not {' and '.join('--' + c for c in chosen)}")
    if layout is not None and layout[0] != "trtllm":
        raise UsageError(f"unknown layout '{layout[0]}'; the one layout is trtllm: --layout trtllm DIR")
    with stages("checking TensorRT and the GPU") as progress:
        result = trt_variant(
            source, chosen[0] if chosen else "fp16", profile=profile, output=output, calib=calib,
            progress=progress, trtllm=layout[1] if layout else None, workspace_gib=workspace, opt_level=opt_level, timing_cache=timing_cache,
            hardware_compat=hardware_compat, version_compatible=version_compatible or None,
            dla_core=dla_core, tf32=tf32 or None, **(_profile_range(batch) if batch else {}),
        )
    m = result.manifest
    console.print(f"[green]{'reused' if result.reused else 'wrote'}[/] {result.path} ({m.precision}, "
                  f"{m.engine_bytes / 2**20:.1f} MiB, TensorRT {m.tensorrt}, {m.gpu['name']}, {m.build_seconds} s)")
    if layout is not None:
        console.print(f"[green]wrote[/] {result.path.parent / 'config.json'} (TensorRT-LLM's multimodal layout)")
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False, soft_wrap=True)


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
    from pe_export.pipeline.commands import openvino_variant

    with stages("checking the request") as progress:
        result = openvino_variant(source, precision, profile=profile, calib=calib, samples=samples, output=output,
                                  progress=progress)
    m, row = result.manifest, result.parity
    console.print(f"[green]{'reused' if result.reused else 'wrote'}[/] {result.path} ({m.precision}, float ops in "
                  f"{m.inference_precision}, {m.file_bytes() / 2**20:.1f} MiB, OpenVINO {m.versions['openvino']}, "
                  f"{m.seconds} s, peak RSS {m.peak_rss_mb / 1024:.2f} GiB)")
    console.print(f"parity vs torch fp32 (OpenVINO CPU): token cosine mean {row.cosine_mean:.5f} "
                  f"(min {row.cosine_min:.5f}), max abs {row.max_abs:.3g}, threshold {row.threshold}")


@model_command
def executorch(
    source: ModelSource,
    precision: Annotated[str, EXECUTORCH_PRECISION.option(help="fp32; fp16 as XNNPACK computes it (GELU in its tanh form); int8 (XNNPACK's int8 kernels, calibrated).")] = "fp32",
    delegate: Annotated[str, DELEGATE.option(help="xnnpack (every ARM and x86 CPU: phones, Apple silicon, Raspberry Pi) or coreml (Apple; converted only here, it cannot run on Linux).")] = "xnnpack",
    profile: Annotated[Optional[str], typer.Option(help="Profile name or YAML file: the output head (as its ONNX export has it), calibration and parity thresholds. Default: the CPU profile.")] = None,
    calib: Annotated[Optional[str], typer.Option(help="Calibration images for int8 (folder, glob or 'synthetic'). Overrides the profile.")] = None,
    samples: Annotated[Optional[int], typer.Option(help="Calibration sample count. Overrides the profile.", min=1)] = None,
    output: Annotated[Optional[Path], typer.Option("--output-path", "-o", help="The .pte to write. Default: `artifacts/<variant>/<variant>[.<tags>].<precision>.pte`")] = None,
) -> None:
    """Write an ExecuTorch program (.pte) for phones and ARM boards, proven on ExecuTorch's own runtime
    against torch fp32 before it is written.

    The tower is exported in an export-friendly form (the same function at fp32) so that the whole graph
    runs in one XNNPACK delegate; the manifest records what the delegate took. The program's batch is
    fixed (the profile's static batch, else 1). Without the executorch extra: exit code 3, nothing written.

    Example: pe-export executorch -v PE-Core-T16-384 --checkpoint core-t16.pt --precision int8 --calib photos/
    """
    from pe_export.pipeline.commands import executorch_variant

    with stages("checking the request") as progress:
        result = executorch_variant(source, precision, delegate=delegate, profile=profile, calib=calib,
                                    samples=samples, output=output, progress=progress)
    m, row = result.manifest, result.parity
    outside = sum(m.delegation["outside"].values())
    console.print(f"[green]{'reused' if result.reused else 'wrote'}[/] {result.path} ({m.precision}, {m.delegate}: "
                  f"{m.delegation['partitions']} partition(s), {outside} op(s) outside, {m.file_bytes() / 2**20:.1f} MiB, "
                  f"ExecuTorch {m.versions['executorch']}, {m.seconds} s, peak RSS {m.peak_rss_mb / 1024:.2f} GiB)")
    if row.passed is None:
        console.print(f"[yellow]parity not proven[/]: {row.note}")
    else:
        console.print(f"parity vs torch fp32 (ExecuTorch runtime, CPU): token cosine mean {row.cosine_mean:.6f} "
                      f"(min {row.cosine_min:.6f}), max abs {row.max_abs:.3g}, threshold {row.threshold}")
