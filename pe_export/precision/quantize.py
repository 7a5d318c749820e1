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
from pe_export.precision.calibration import CalibrationSet, load_calibration
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
    chosen = resolve_profile(profile, variant)
    chosen.require(precision)
    convert.require_tools(precision)
    calibration = None
    if spec.calibrated:
        c = chosen.calibration
        progress("reading calibration images")
        calibration = load_calibration(calib or c.source, samples or c.samples, variant.image_size, c.seed, c.allow_fewer)
    if output:
        artifacts.prepare_destination(Path(output))
    progress("loading weights")
    loaded = source.load()
    return make_precision(loaded, precision, chosen, calibration, output, progress)


def precision_onnx(loaded: LoadedModel, precision: str, profile: Profile, calib: str | None = None,
                   samples: int | None = None, progress: Callable[[str], None] = lambda s: None) -> Path:
    """The ONNX file of any precision (fp32 included) for this profile, made or reused."""
    spec = get_precision(precision)
    if spec.kind == "reference":
        return ensure_onnx(loaded, export_options(profile), progress=progress).path
    c = profile.calibration
    calibration = lambda: (  # noqa: E731 - read only if a new int8/fp8 artifact is made
        load_calibration(calib or c.source, samples or c.samples, loaded.variant.image_size, c.seed, c.allow_fewer)
        if spec.calibrated else None
    )
    return ensure_precision(loaded, precision, profile, calibration, progress=progress).path


def ensure_precision(
    loaded: LoadedModel,
    precision: str,
    profile: Profile,
    calibration: Callable[[], CalibrationSet | None],
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> PrecisionResult:
    """The precision ONNX for this fp32 export and profile: reused when its manifest matches, else made.

    `calibration` is called only when a new int8/fp8 artifact has to be made.
    """
    fp32 = ensure_onnx(loaded, export_options(profile), progress=progress)
    path = Path(output) if output else precision_path(fp32.path, precision)
    manifest = artifacts.load_manifest(path)
    same = manifest is not None and (
        manifest.get("precision") == precision
        and manifest.get("source_onnx", {}).get("sha256") == fp32.manifest["files"][fp32.path.name]["sha256"]
        and manifest.get("profile", {}).get("name") == profile.name
        and manifest.get("exclusions") == getattr(profile.quantization, precision).model_dump()
    )
    if same and artifacts.files_match(path, manifest):
        progress(f"reusing {path}")
        return PrecisionResult(path, manifest, ParityRow.recorded(manifest["parity"]))
    return make_precision(loaded, precision, profile, calibration(), output, progress)


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
        _convert(fp32, staged, precision, profile, calibration, external)
        model_files = [staged, *([scratch / f"{path.name}.data"] if external else [])]
        manifest = _manifest(loaded, fp32, precision, profile, calibration, staged)
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


def _convert(fp32: ExportResult, staged: Path, precision: str, profile: Profile, calibration, external: bool) -> None:
    if get_precision(precision).kind == "mixed":
        convert.mixed_precision(fp32.path, staged, precision, getattr(profile.quantization, precision), external)
    else:
        convert.quantize_qdq(fp32.path, staged, precision, getattr(profile.quantization, precision), calibration.batch,
                             profile.calibration, INPUT_NAME, external)


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
