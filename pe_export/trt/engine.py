"""Engines of a precision ONNX: the build settings a profile and the command line give, the GPU's
ability to run a precision, and the engine made or reused for its ONNX."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from pydantic import ValidationError

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import TensorRTUnavailable, UsageError
from pe_export.manifests import EngineManifest
from pe_export.precision.profiles import Profile
from pe_export.precisions import get_precision
from pe_export.runners.tensorrt import incompatibility
from pe_export.runners.tensorrt_env import Gpu, current_gpu, import_tensorrt
from pe_export.trt.build import BuildSettings, EngineResult, SourceOnnx, build_engine, check_dla, engine_key


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


def require_gpu_for(precision: str, gpu: Gpu | None = None) -> Gpu:
    """The GPU (default: this machine's), refused when TensorRT has no kernels for the precision on it."""
    gpu = gpu or current_gpu()
    problem = gpu_cannot_run(precision, gpu)
    if problem:
        raise TensorRTUnavailable(problem)
    return gpu


def check_build(precision: str, profile: Profile, gpu: Gpu | None = None, **overrides) -> tuple[BuildSettings, Gpu]:
    """TensorRT, the GPU and the build settings, checked before any work (nothing is written without them)."""
    import_tensorrt()
    gpu = require_gpu_for(precision, gpu)
    settings = build_settings(profile, precision, **overrides)
    check_dla(settings.dla_core)
    return settings, gpu


def ensure_engine(onnx: SourceOnnx, settings: BuildSettings, engine_path: Path | None = None, gpu: Gpu | None = None,
                  progress: Callable[[str], None] = lambda s: None, digests: Digests | None = None) -> EngineResult:
    """The engine for this ONNX and these settings: reused when its key matches (same ONNX identity and
    settings) and this TensorRT and GPU may run it by NVIDIA's rules, else built, saying why."""
    trt = import_tensorrt()
    gpu = gpu or current_gpu()
    digests = digests or Digests()
    path = engine_path or onnx.path.with_suffix(".engine")
    manifest, why = artifacts.reusable(path, engine_key(onnx, settings), digests)
    if isinstance(manifest, EngineManifest):
        why = incompatibility(manifest, str(trt.__version__), gpu) or why
        if why == "same key":
            progress(f"reused {path} (same key, and this TensorRT and GPU run it)")
            return EngineResult(path, manifest, reused=True)
    if why != artifacts.NOTHING_TO_REUSE:
        progress(f"building {path} again: {why}")
    return build_engine(onnx, settings, path, gpu, progress, digests)
