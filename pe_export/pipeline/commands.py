"""What the chain's commands do, each as one call: check the request before any work, then ask one
plan for the artifact (`pe-export quantize`, `sensitivity`, `trt`, `openvino`, `executorch`)."""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import UsageError
from pe_export.memory import rss_mb
from pe_export.onnx.spec import resolve
from pe_export.openvino.ir import Reference, source_precision
from pe_export.pipeline import Plan
from pe_export.pipeline.worker import DIGESTS
from pe_export.precision.profiles import cpu_profile, resolve_profile
from pe_export.precision.spec import export_options, request_profile
from pe_export.precisions import get_precision
from pe_export.processes import run_worker
from pe_export.report import PrecisionResult
from pe_export.runners.openvino import require_precision
from pe_export.source import ModelSource
from pe_export.trt.build import EngineResult
from pe_export.variants import get_variant

Progress = Callable[[str], None]
TORCH_WORKER = "pe_export.pipeline.worker"


def quantize_variant(
    source: ModelSource,
    precision: str,
    *,
    profile: str | Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    output: Path | None = None,
    auto_exclude: bool = False,
    progress: Progress = lambda step: None,
) -> PrecisionResult:
    """Check the request, read the calibration set, then make and prove the artifact from the fp32
    ONNX (made or reused); the precision artifact itself is always made anew."""
    spec = get_precision(precision)
    if spec.kind == "reference":
        raise UsageError("fp32 is the export itself: make it with `pe-export onnx`; quantize makes fp16, bf16, int8 or fp8")
    if auto_exclude and not spec.calibrated:
        raise UsageError(f"--auto-exclude chooses Q/DQ sites to keep in high precision; {precision} has none (int8 and fp8 do)")
    chosen = request_profile(source, precision, profile, calib, samples)
    if auto_exclude:
        chosen = chosen.with_auto_exclude(precision)
    plan = Plan(source, chosen, progress)
    if spec.calibrated:
        plan.calibration()  # unreadable images are refused before any weights load
    if output:
        artifacts.prepare_destination(Path(output))
    return plan.make_precision(precision, output)


def sensitivity_variant(
    source: ModelSource,
    precision: str,
    *,
    profile: str | Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    images: int | None = None,
    mode: str = "alone",
    threads: int | None = None,
    progress: Progress = lambda step: None,
):
    """Rank every site the profile quantizes by the damage it does to the output alone (or the damage
    left when it alone stays in high precision), on `images` parity inputs."""
    from pe_export.precision.quantize import RANKING_IMAGES, rank_sites

    if not get_precision(precision).calibrated:
        raise UsageError(f"sensitivity ranks the Q/DQ sites of int8 and fp8; {precision} has none")
    plan = Plan(source, request_profile(source, precision, profile, calib, samples), progress)
    calibration = plan.calibration()
    fp32 = plan.fp32()
    return rank_sites(fp32, plan.weights(), precision, plan.profile, calibration, images or RANKING_IMAGES,
                      mode, threads, progress)  # type: ignore[arg-type]


def trt_variant(
    source: ModelSource,
    precision: str = "fp16",
    *,
    profile: str | Path | None = None,
    output: Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    progress: Progress = lambda step: None,
    gpu=None,
    trtllm: Path | None = None,
    **overrides,
) -> EngineResult:
    """Check TensorRT, the GPU and the settings first (nothing is written without them), then make or
    reuse the precision ONNX and build or reuse its engine. `trtllm`: a folder to write the engine into
    in TensorRT-LLM's multimodal layout (`vision/model.engine` and `vision/config.json`) instead."""
    from pe_export.runners.tensorrt_env import import_tensorrt
    from pe_export.trt import trtllm as layout
    from pe_export.trt.engine import check_build

    import_tensorrt()
    chosen = request_profile(source, precision, profile, calib, samples)
    if trtllm is not None:
        if output:
            raise UsageError("give either --output-path or --layout trtllm DIR, not both")
        layout.check_layout(resolve(export_options(chosen), get_variant(source.variant)).output)
        output, overrides = layout.engine_path(trtllm), {**overrides, "tensor_names": "trtllm"}
    settings, gpu = check_build(precision, chosen, gpu, **overrides)
    if output:
        artifacts.prepare_destination(Path(output))
    engine = Plan(source, chosen, progress).engine(precision, settings, Path(output) if output else None, gpu)
    if trtllm is not None:
        layout.write_config(engine.path, engine.manifest)
    return engine


def openvino_variant(
    source: ModelSource,
    precision: str | None = None,
    *,
    profile: str | Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    output: Path | None = None,
    progress: Progress = lambda step: None,
) -> PrecisionResult:
    """Check the request, then reuse the IR when its whole chain matches; else one worker makes (or
    reuses) the ONNX and computes the torch reference, and the next makes the IR (default precision:
    the one the profile deploys on OpenVINO, else fp32). This process never imports torch."""
    variant = get_variant(source.variant)
    named = resolve_profile(profile, variant) if profile else cpu_profile(variant.name)
    precision = precision or named.deployed_precision("openvino") or "fp32"
    require_precision(precision)
    chosen = request_profile(source, precision, profile, calib, samples, onnx_precision=source_precision(precision),
                             default=cpu_profile)
    destination = Path(output) if output else None
    if destination:
        artifacts.prepare_destination(destination)
    said: list[str] = []  # what the look-up found: said only when it settles the command
    looking = Plan(source, chosen, said.append, _weights_digest(source, progress))
    found = looking.reused_ir(precision, destination)
    if found is not None:
        for line in said:
            progress(line)
        return found
    plan = Plan(source, chosen, progress, looking.digests)
    # the reference is staged where the IR goes, so that a killed run's is removed by the next run there
    with artifacts.staging(destination or plan.ir_path(precision)) as work:
        held = rss_mb()
        job = {"job": "reference", "source": source.as_job(), "precision": precision, "profile": chosen.model_dump(mode="json"),
               "profile_path": str(chosen.path) if chosen.path else None, "digests": plan.digests.known()}
        torch_peak = run_worker(TORCH_WORKER, job, work, "the torch reference", progress)
        reference = Reference.load(work)
    return plan.make_ir(reference, precision, destination, earlier_peak_mb=held + torch_peak)


def executorch_variant(
    source: ModelSource,
    precision: str = "fp32",
    *,
    delegate: str = "xnnpack",
    profile: str | Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    output: Path | None = None,
    progress: Progress = lambda step: None,
) -> PrecisionResult:
    """Check ExecuTorch and the request first (nothing is written without them), then reuse the program
    when its key matches, else lower the export-friendly tower (int8: calibrated on the profile's images,
    or `calib`) and prove it on ExecuTorch's runtime. The output head is the one the profile's ONNX
    export carries (default profile: the CPU one)."""
    from pe_export.edge.spec import check_request
    from pe_export.runners.executorch import require_executorch

    require_executorch()
    check_request(precision, delegate)
    variant = get_variant(source.variant)
    chosen = (resolve_profile(profile, variant) if profile else cpu_profile(variant.name)).with_calibration(calib, samples)
    chosen.require_real_calibration(precision, not source.random_init, calib)
    if output:
        artifacts.prepare_destination(Path(output))
    return Plan(source, chosen, progress).program(precision, delegate, Path(output) if output else None)


def _weights_digest(source: ModelSource, progress: Progress) -> Digests:
    """Digests holding the checkpoint's weights digest, computed by a torch worker (so that this process
    never imports torch); empty for random init."""
    digests = Digests()
    if not source.random_init:
        with tempfile.TemporaryDirectory(prefix="pe-export-digest-") as work:
            run_worker(TORCH_WORKER, {"job": "digest", "source": source.as_job()}, Path(work),
                       "reading the checkpoint's weights", progress)
            digests = Digests(json.loads((Path(work) / DIGESTS).read_text()))
    return digests
