"""`pe-export trt`: the ONNX of a precision (made or reused through the earlier stages), then its engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from pe_export import artifacts
from pe_export.errors import TensorRTUnavailable, UsageError
from pe_export.model import LoadedModel, ModelSource, load_source
from pe_export.precision.convert import require_tools
from pe_export.precision.profiles import Profile, resolve_profile
from pe_export.precision.quantize import precision_onnx
from pe_export.precisions import get_precision
from pe_export.runners.tensorrt import incompatibility
from pe_export.runners.tensorrt_env import Gpu, current_gpu, import_tensorrt
from pe_export.trt.build import BuildSettings, EngineResult, build_engine, check_dla, engine_key
from pe_export.variants import get_variant


def build_settings(profile: Profile, precision: str, **overrides) -> BuildSettings:
    """The profile's TensorRT section and batch range, with the options the user gave on top."""
    base = {
        **(profile.tensorrt.model_dump() if profile.tensorrt else {}),
        "precision": precision, "batch_min": profile.batch.min, "batch_opt": profile.batch.opt, "batch_max": profile.batch.max,
    }
    try:
        return BuildSettings(**{**base, **{k: v for k, v in overrides.items() if v is not None}})
    except ValidationError as exc:
        raise UsageError(f"bad TensorRT settings: {exc.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def covering_settings(profile: Profile, precision: str, batches: Sequence[int]) -> BuildSettings:
    """The profile's settings with its batch range widened to cover `batches` (its opt stays), so that
    one engine serves parity and every benchmarked batch, and `pe-export trt --profile` builds the same one."""
    return build_settings(profile, precision, batch_min=min(profile.batch.min, *batches),
                          batch_max=max(profile.batch.max, *batches))


def gpu_cannot_run(precision: str, gpu: Gpu) -> str | None:
    """Why TensorRT has no kernels for this precision on this GPU, or None."""
    needed = get_precision(precision).min_sm
    if needed and gpu.compute_capability < needed:
        return (f"{precision} engines need a GPU of compute capability {needed[0]}.{needed[1]} or newer; "
                f"this is {gpu.name} (sm {gpu.sm})")
    return None


def require_gpu_for(precision: str, gpu: Gpu) -> None:
    problem = gpu_cannot_run(precision, gpu)
    if problem:
        raise TensorRTUnavailable(problem)


def ensure_engine(onnx_path: Path, settings: BuildSettings, engine_path: Path | None = None, gpu: Gpu | None = None,
                  progress: Callable[[str], None] = lambda s: None) -> EngineResult:
    """The engine for this ONNX and these settings: reused when its key matches (same ONNX and
    settings) and this TensorRT and GPU may run it by NVIDIA's rules, else built, saying why."""
    trt = import_tensorrt()
    gpu = gpu or current_gpu()
    path = engine_path or onnx_path.with_suffix(".engine")
    metadata, why = artifacts.reusable(path, engine_key(onnx_path, settings))
    if metadata is not None:
        why = incompatibility(metadata, str(trt.__version__), gpu) or why
        if why == "same key":
            progress(f"reused {path} (same key, and this TensorRT and GPU run it)")
            return EngineResult(path, metadata)
    if why != artifacts.NOTHING_TO_REUSE:
        progress(f"building {path} again: {why}")
    return build_engine(onnx_path, settings, path, gpu, progress)


def engine_for_batches(loaded: LoadedModel, precision: str, profile: Profile, batches: Sequence[int],
                       progress: Callable[[str], None] = lambda s: None) -> EngineResult:
    """The engine of a precision whose batch range covers `batches`, from the profile's ONNX: made or reused."""
    require_gpu_for(precision, current_gpu())
    settings = covering_settings(profile, precision, batches)
    onnx_path = precision_onnx(loaded, precision, profile, progress=progress)
    return ensure_engine(onnx_path, settings, None, None, progress)


def trt_variant(
    source: ModelSource,
    precision: str = "fp16",
    *,
    profile: str | Path | None = None,
    output: Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    progress: Callable[[str], None] = lambda step: None,
    gpu: Gpu | None = None,
    **overrides,
) -> EngineResult:
    """Check TensorRT, the GPU and the settings first (nothing is written without them), then make or
    reuse the precision ONNX and build or reuse its engine."""
    import_tensorrt()
    gpu = gpu or current_gpu()
    chosen = resolve_profile(profile, get_variant(source.variant)).with_calibration(calib, samples)
    chosen.require(precision)
    require_gpu_for(precision, gpu)
    require_tools(precision)
    chosen.require_real_calibration(precision, not source.random_init, calib)
    settings = build_settings(chosen, precision, **overrides)
    check_dla(settings.dla_core)
    if output:
        artifacts.prepare_destination(Path(output))
    progress("loading weights")
    loaded = load_source(source)
    onnx_path = precision_onnx(loaded, precision, chosen, progress)
    return ensure_engine(onnx_path, settings, Path(output) if output else None, gpu, progress)
