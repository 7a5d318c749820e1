"""`pe-export trt`: the ONNX of a precision (made or reused through the earlier stages), then its engine."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pydantic import ValidationError

from pe_export import artifacts
from pe_export.errors import UsageError
from pe_export.model import ModelSource
from pe_export.precision.convert import require_tools
from pe_export.precision.profiles import Profile, resolve_profile
from pe_export.precision.quantize import precision_onnx, require_real_calibration
from pe_export.runners.tensorrt_env import Gpu, current_gpu, import_tensorrt
from pe_export.trt.build import BuildSettings, EngineResult, build_engine
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


def ensure_engine(onnx_path: Path, settings: BuildSettings, engine_path: Path | None = None, trt=None,
                  gpu: Gpu | None = None, progress: Callable[[str], None] = lambda s: None) -> EngineResult:
    """The engine for this ONNX and these settings: reused when its metadata matches (same ONNX, settings,
    TensorRT and GPU), else built."""
    trt = trt or import_tensorrt()
    gpu = gpu or current_gpu()
    path = engine_path or onnx_path.with_suffix(".engine")
    metadata = artifacts.load_manifest(path)
    if metadata and (
        metadata.get("onnx", {}).get("sha256") == artifacts.file_sha256(onnx_path)
        and metadata.get("settings") == settings.recorded()
        and metadata.get("tensorrt") == str(trt.__version__)
        and metadata.get("gpu", {}).get("compute_capability") == gpu.sm
        and artifacts.files_match(path, metadata)
    ):
        progress(f"reusing {path}")
        return EngineResult(path, metadata)
    return build_engine(onnx_path, settings, path, trt, gpu, progress)


def trt_variant(
    source: ModelSource,
    precision: str = "fp16",
    *,
    profile: str | Path | None = None,
    output: Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    progress: Callable[[str], None] = lambda step: None,
    trt=None,
    gpu: Gpu | None = None,
    **overrides,
) -> EngineResult:
    """Check TensorRT and the GPU first (nothing is written without them), then make or reuse the
    precision ONNX and build or reuse its engine."""
    trt = trt or import_tensorrt()
    gpu = gpu or current_gpu()
    chosen = resolve_profile(profile, get_variant(source.variant)).with_calibration(calib, samples)
    chosen.require(precision)
    require_tools(precision)
    require_real_calibration(source, chosen, precision, calib)
    settings = build_settings(chosen, precision, **overrides)
    if output:
        artifacts.prepare_destination(Path(output))
    progress("loading weights")
    loaded = source.load()
    onnx_path = precision_onnx(loaded, precision, chosen, progress)
    return ensure_engine(onnx_path, settings, Path(output) if output else None, trt, gpu, progress)

