"""`pe-export quantize`: a precision variant of the fp32 ONNX, calibrated per profile and proven on
onnxruntime CPU against the torch fp32 model before it takes its normal name."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pe_export import artifacts
from pe_export.errors import CheckFailed, UsageError
from pe_export.model import LoadedModel, ModelSource
from pe_export.model.head import OutputHead
from pe_export.onnx.export import EXTERNAL_DATA_BYTES, INPUT_NAME, ExportOptions, ExportResult, ensure_onnx
from pe_export.precision import convert
from pe_export.precision.calibrate import calibration_provider
from pe_export.precision.calibration import CalibrationSet, images_fingerprint, load_calibration
from pe_export.precision.profiles import Profile, resolve_profile
from pe_export.precisions import get_precision
from pe_export.report import ParityRow
from pe_export.validate import artifact_parity, reference_outputs, synthetic_inputs
from pe_export.variants import get_variant
from pe_export.versions import versions

PARITY_SAMPLES = 4


@dataclass(frozen=True)
class PrecisionResult:
    path: Path
    manifest: dict
    parity: ParityRow


def export_options(profile: Profile) -> ExportOptions:
    e = profile.export
    return ExportOptions(target=e.target, opset=e.opset, rope=e.rope, attention=e.attention, output=e.output)


def precision_path(fp32: Path, precision: str) -> Path:
    return fp32.with_name(f"{fp32.stem}.{precision}.onnx")


def quantize_variant(
    source: ModelSource,
    precision: str,
    *,
    profile: str | Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> PrecisionResult:
    """Check the request, read the calibration set, load weights, then make and prove the artifact."""
    variant = get_variant(source.variant)
    spec = get_precision(precision)
    if spec.kind == "reference":
        raise UsageError("fp32 is the export itself: make it with `pe-export onnx`; quantize makes fp16, bf16, int8 or fp8")
    chosen = resolve_profile(profile, variant).with_calibration(calib, samples)
    chosen.require(precision)
    convert.require_tools(precision)
    calibration = None
    if spec.calibrated:
        progress("reading calibration images")
        calibration = read_calibration(chosen, variant.image_size)
    if output:
        artifacts.prepare_destination(Path(output))
    progress("loading weights")
    loaded = source.load()
    return make_precision(loaded, precision, chosen, calibration, output, progress)


def read_calibration(profile: Profile, size: int) -> CalibrationSet:
    c = profile.calibration
    return load_calibration(c.source, c.samples, size, c.seed, c.allow_fewer)


def precision_onnx(loaded: LoadedModel, precision: str, profile: Profile,
                   progress: Callable[[str], None] = lambda s: None) -> Path:
    """The ONNX file of any precision (fp32 included) for this profile, made or reused."""
    if get_precision(precision).kind == "reference":
        return ensure_onnx(loaded, export_options(profile), progress=progress).path
    return ensure_precision(loaded, precision, profile, progress=progress).path


def precision_key(fp32: ExportResult, precision: str, profile: Profile) -> dict:
    """Everything a precision variant depends on: its source ONNX, calibration settings and images,
    quantization settings and parity threshold."""
    calibrated = get_precision(precision).calibrated
    return {
        "precision": precision,
        "source_onnx": fp32.manifest["files"][fp32.path.name]["sha256"],
        "calibration": profile.calibration.model_dump() if calibrated else None,
        "calibration_images": images_fingerprint(profile.calibration.source) if calibrated else None,
        "quantization": getattr(profile.quantization, precision).model_dump(),
        "threshold": profile.threshold(precision),
    }


def ensure_precision(
    loaded: LoadedModel,
    precision: str,
    profile: Profile,
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> PrecisionResult:
    """The precision ONNX for this fp32 export and profile: reused when its key matches, else made
    (calibration images are read only then)."""
    fp32 = ensure_onnx(loaded, export_options(profile), progress=progress)
    path = Path(output) if output else precision_path(fp32.path, precision)
    manifest, why = artifacts.reusable(path, precision_key(fp32, precision, profile))
    if manifest is not None:
        progress(f"reused {path} ({why})")
        return PrecisionResult(path, manifest, ParityRow.recorded(manifest["parity"]))
    if why != "nothing to reuse":
        progress(f"making {path} again: {why}")
    calibration = read_calibration(profile, loaded.variant.image_size) if get_precision(precision).calibrated else None
    return make_precision(loaded, precision, profile, calibration, output, progress)


def make_precision(
    loaded: LoadedModel,
    precision: str,
    profile: Profile,
    calibration: CalibrationSet | None,
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> PrecisionResult:
    start = time.perf_counter()
    fp32 = ensure_onnx(loaded, export_options(profile), progress=progress)
    path = Path(output) if output else precision_path(fp32.path, precision)
    artifacts.prepare_destination(path)
    external = fp32.manifest["external_data"] or fp32.path.stat().st_size > EXTERNAL_DATA_BYTES
    with artifacts.staging(path) as scratch:
        staged = scratch / path.name
        progress(f"making {precision} from {fp32.path.name}")
        _convert(fp32, staged, precision, profile, calibration, external, progress)
        model_files = [staged, *([scratch / f"{path.name}.data"] if external else [])]
        manifest = _manifest(loaded, fp32, precision, profile, calibration, staged)
        manifest["key"] = precision_key(fp32, precision, profile)
        manifest_file = scratch / artifacts.manifest_path(path).name
        artifacts.write_json(manifest_file, manifest)  # parity reads the artifact's options from it
        progress(f"proving {precision} parity on onnxruntime CPU")
        inputs = synthetic_inputs(loaded.variant, PARITY_SAMPLES)
        reference = reference_outputs(OutputHead.for_options(loaded.model, fp32.manifest["options"]).eval(), inputs.batch)
        row = artifact_parity(staged, reference, inputs, profile.threshold(precision))
        manifest.update(parity={**row.model_dump(), "inputs": "synthetic, seed 1 (apart from calibration)"},
                        seconds=round(time.perf_counter() - start, 1), files=artifacts.file_digests(model_files),
                        peak_rss_mb=_peak_rss_mb())
        artifacts.write_json(manifest_file, manifest)
        if row.passed is False:
            # kept for inspection in a folder of its own, under its normal file names (external data
            # references stay valid), never at the path users and later stages read
            rejected = path.parent / f"{path.name}.rejected"
            rejected.mkdir(exist_ok=True)
            artifacts.publish([*model_files, manifest_file], rejected / path.name)
            raise CheckFailed(
                f"{precision} misses its parity threshold: token cosine mean {row.cosine_mean:.5f} < {row.threshold} "
                f"(min {row.cosine_min:.5f}, max abs {row.max_abs:.3g}); kept for inspection in {rejected}/, "
                "not under its normal name"
            )
        artifacts.publish([*model_files, manifest_file], path)
    return PrecisionResult(path, manifest, row)


def _peak_rss_mb() -> float:
    """This process's peak plus the calibration process's: an upper bound on what was held at once."""
    return round(sum(resource.getrusage(who).ru_maxrss for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
                 / 1024, 1)


def _convert(fp32: ExportResult, staged: Path, precision: str, profile: Profile, calibration, external: bool,
             progress: Callable[[str], None]) -> None:
    if get_precision(precision).kind == "mixed":
        convert.mixed_precision(fp32.path, staged, precision, getattr(profile.quantization, precision), external)
    else:
        convert.quantize_qdq(fp32.path, staged, precision, getattr(profile.quantization, precision), calibration.batch,
                             profile.calibration, INPUT_NAME, external,
                             lambda done, total: progress(f"calibrating: {done}/{total} images"))


def _manifest(loaded, fp32: ExportResult, precision, profile: Profile, calibration, staged: Path) -> dict:
    section = getattr(profile.quantization, precision)
    return {
        "kind": "onnx",
        "variant": loaded.variant.name,
        "precision": precision,
        "weights": loaded.source.as_dict(),
        "options": fp32.manifest["options"],
        "source_onnx": {"path": str(fp32.path), "sha256": fp32.manifest["files"][fp32.path.name]["sha256"]},
        "profile": {"name": profile.name, "path": str(profile.path) if profile.path else None},
        "method": convert.calibration_method(precision, profile.calibration.method) if calibration is not None
        else "autocast",
        "calibration_provider": calibration_provider(profile.calibration.provider) if calibration is not None else None,
        "exclusions": section.model_dump(),
        "calibration": calibration.describe() if calibration is not None else None,
        "qdq_nodes": convert.qdq_count(staged),
        "inputs": fp32.manifest["inputs"],
        "outputs": fp32.manifest["outputs"],
        "external_data": fp32.manifest["external_data"],
        "versions": versions(("pe-export", "torch", "onnx", "onnxruntime", "nvidia-modelopt")),
    }
