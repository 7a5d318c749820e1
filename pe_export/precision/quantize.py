"""`pe-export quantize` and `pe-export sensitivity`: a precision variant of the fp32 ONNX, calibrated
per profile and proven on onnxruntime CPU against the torch fp32 model before it takes its normal
name, and the ranking of its quantized sites by the damage each one does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from pe_export import artifacts
from pe_export.errors import CheckFailed, UsageError
from pe_export.memory import peak_rss_mb, release_memory
from pe_export.model import LoadedModel, ModelSource, load_source
from pe_export.model.head import OutputHead
from pe_export.onnx.export import EXTERNAL_DATA_BYTES, INPUT_NAME, ExportOptions, ExportResult, ensure_onnx
from pe_export.precision import convert, sensitivity
from pe_export.precision.calibrate import calibration_provider
from pe_export.precision.calibration import CalibrationSet, images_fingerprint, load_calibration
from pe_export.precision.profiles import Profile, resolve_profile
from pe_export.precision.sensitivity import Emulator, Mode, SensitivityReport
from pe_export.precisions import get_precision
from pe_export.report import ParityRow, PrecisionResult
from pe_export.validate import ParityInputs, artifact_parity, reference_outputs, synthetic_inputs
from pe_export.variants import get_variant
from pe_export.versions import versions

PARITY_SAMPLES = 4
# Parity inputs a sensitivity ranking is scored on: one image's tokens rank the sites as two do
# (on the Spatial-T16 stress model the damages of 1 and 2 images correlate at 0.9999, same top 5).
RANKING_IMAGES = 1
PREDICTED_PER_STEP = 4  # fallback candidates (1, 2, ... sites kept) emulated per step
Progress = Callable[[str], None]


def export_options(profile: Profile) -> ExportOptions:
    e = profile.export
    return ExportOptions(target=e.target, opset=e.opset, rope=e.rope, attention=e.attention, output=e.output)


def precision_path(fp32: Path, precision: str) -> Path:
    return fp32.with_name(f"{fp32.stem}.{precision}.onnx")


def resolve_request(source: ModelSource, precision: str, profile: str | Path | None, calib: str | None,
                    samples: int | None) -> Profile:
    """The profile a command runs with, refused before any work when it cannot make `precision`."""
    chosen = resolve_profile(profile, get_variant(source.variant)).with_calibration(calib, samples)
    chosen.require(precision)
    convert.require_tools(precision)
    chosen.require_real_calibration(precision, not source.random_init, calib)
    return chosen


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
    """Check the request, read the calibration set, load weights, then make and prove the artifact."""
    spec = get_precision(precision)
    if spec.kind == "reference":
        raise UsageError("fp32 is the export itself: make it with `pe-export onnx`; quantize makes fp16, bf16, int8 or fp8")
    if auto_exclude and not spec.calibrated:
        raise UsageError(f"--auto-exclude chooses Q/DQ sites to keep in high precision; {precision} has none (int8 and fp8 do)")
    chosen = resolve_request(source, precision, profile, calib, samples)
    if auto_exclude:
        chosen = chosen.with_auto_exclude(precision)
    variant = get_variant(source.variant)
    calibration = None
    if spec.calibrated:
        progress("reading calibration images")
        calibration = read_calibration(chosen, variant.image_size)
    if output:
        artifacts.prepare_destination(Path(output))
    progress("loading weights")
    loaded = load_source(source)
    return make_precision(loaded, precision, chosen, calibration, output, progress)


def read_calibration(profile: Profile, size: int) -> CalibrationSet:
    c = profile.calibration
    return load_calibration(c.source, c.samples, size, c.seed, c.allow_fewer)


def precision_onnx(loaded: LoadedModel, precision: str, profile: Profile, progress: Progress = lambda s: None) -> Path:
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
    progress: Progress = lambda step: None,
) -> PrecisionResult:
    """The precision ONNX for this fp32 export and profile: reused when its key matches, else made
    (calibration images are read only then)."""
    fp32 = ensure_onnx(loaded, export_options(profile), progress=progress)
    path = Path(output) if output else precision_path(fp32.path, precision)
    manifest = artifacts.reuse(path, precision_key(fp32, precision, profile), progress)
    if manifest is not None:
        return PrecisionResult(path, manifest, ParityRow.recorded(manifest["parity"]))
    calibration = read_calibration(profile, loaded.variant.image_size) if get_precision(precision).calibrated else None
    return make_precision(loaded, precision, profile, calibration, output, progress)


def make_precision(
    loaded: LoadedModel,
    precision: str,
    profile: Profile,
    calibration: CalibrationSet | None,
    output: Path | None = None,
    progress: Progress = lambda step: None,
) -> PrecisionResult:
    start = time.perf_counter()
    fp32 = ensure_onnx(loaded, export_options(profile), progress=progress)
    path = Path(output) if output else precision_path(fp32.path, precision)
    artifacts.prepare_destination(path)
    external = _external(fp32)
    threshold = profile.threshold(precision)
    with artifacts.staging(path) as scratch:
        staged = scratch / path.name
        progress(f"making {precision} from {fp32.path.name}")
        calibrated = None
        if get_precision(precision).kind == "mixed":
            convert.mixed_precision(fp32.path, staged, precision, getattr(profile.quantization, precision), external)
        else:
            calibrated = _calibrate(fp32, precision, profile, calibration, scratch, progress)
            convert.save_model(convert.quantized_model(calibrated), staged, external)
            release_memory()  # the model's copy in memory goes back before parity loads the artifact
        model_files = [staged, *([scratch / f"{path.name}.data"] if external else [])]
        manifest = _manifest(loaded, fp32, precision, profile, calibration, calibrated)
        manifest["key"] = precision_key(fp32, precision, profile)
        manifest_file = scratch / artifacts.manifest_path(path).name
        artifacts.write_json(manifest_file, manifest)  # parity reads the artifact's options from it
        progress(f"proving {precision} parity on onnxruntime CPU")
        inputs = synthetic_inputs(loaded.variant, PARITY_SAMPLES)
        reference = reference_outputs(OutputHead.for_options(loaded.model, fp32.manifest["options"]).eval(), inputs.batch)
        row = artifact_parity(staged, reference, inputs, threshold)
        if row.passed is False and calibrated is not None and getattr(profile.quantization, precision).auto_exclude:
            manifest["auto_exclude"], row = _auto_exclude(calibrated, staged, external, scratch, inputs, reference,
                                                          threshold, progress)
        manifest.update(parity={**row.model_dump(), "inputs": "synthetic, seed 1 (apart from calibration)"},
                        qdq_nodes=convert.qdq_count(staged), seconds=round(time.perf_counter() - start, 1),
                        files=artifacts.file_digests(model_files), peak_rss_mb=peak_rss(calibrated))
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
                "not under its normal name" + ("" if "auto_exclude" in manifest else
                                               "; `--auto-exclude` keeps the most sensitive sites in high precision")
            )
        artifacts.publish([*model_files, manifest_file], path)
    return PrecisionResult(path, manifest, row)


def _external(fp32: ExportResult) -> bool:
    return bool(fp32.manifest["external_data"]) or fp32.path.stat().st_size > EXTERNAL_DATA_BYTES


def _calibrate(fp32: ExportResult, precision: str, profile: Profile, calibration: CalibrationSet, work: Path,
               progress: Progress) -> convert.Calibrated:
    return convert.calibrate(fp32.path, precision, getattr(profile.quantization, precision), calibration.batch,
                             profile.calibration, INPUT_NAME, work,
                             lambda step, done, total: progress(f"{step}: {done}/{total} images"))


def _auto_exclude(calibrated: convert.Calibrated, staged: Path, external: bool, work: Path, inputs: ParityInputs,
                  reference, threshold: float, progress: Progress) -> tuple[dict, ParityRow]:
    """Keep the fewest sites in high precision that make the artifact pass: rank the sites by the
    damage each does alone (emulated), predict the shortest prefix of that ranking whose exclusion
    passes, then prove it with real parity runs, one more site at a time until one passes."""
    start = time.perf_counter()
    batch, scored = inputs.batch[:RANKING_IMAGES], reference[:RANKING_IMAGES]
    progress("auto-exclude: building the emulation model")
    emulator = Emulator(convert.smoothed_model(calibrated), calibrated.sites, calibrated.ranges.amax,
                        calibrated.precision, work, external)
    _, ranked = sensitivity.rank(emulator, "alone", batch, scored,
                                 lambda done, total: progress(f"auto-exclude: ranking sites: {done}/{total}"))
    order = [s.site for s in ranked]
    count = _predicted_count(emulator, order, batch, scored, threshold)
    ranking_seconds = time.perf_counter() - start
    del emulator
    release_memory()
    tried = []
    while True:
        progress(f"auto-exclude: proving {count} of {len(order)} sites kept in high precision")
        convert.save_model(convert.quantized_model(calibrated, frozenset(order[:count])), staged, external)
        release_memory()
        row = artifact_parity(staged, reference, inputs, threshold)
        tried.append({"excluded": count, "cosine_mean": row.cosine_mean})
        if row.passed or count == len(order):
            break
        count += 1
    excluded = order[:count]
    gmacs = {s.site: s.gmacs for s in ranked}
    return {
        "excluded": excluded, "exclude_patterns": sensitivity.exclusion_patterns(excluded),
        "excluded_work_share": round(sum(gmacs[n] for n in excluded) / (sum(gmacs.values()) or 1.0), 4),
        "sites": len(order), "tried": tried, "ranking_seconds": round(ranking_seconds, 1),
        "seconds": round(time.perf_counter() - start, 1),
    }, row


def _predicted_count(emulator: Emulator, order: list[str], batch, reference, threshold: float) -> int:
    """The fewest most-damaging sites whose exclusion the emulation predicts to pass, scored
    PREDICTED_PER_STEP candidates at a time, so that a short answer costs little."""
    everything = frozenset(order)
    for first in range(1, len(order) + 1, PREDICTED_PER_STEP):
        counts = range(first, min(first + PREDICTED_PER_STEP, len(order) + 1))
        figures = emulator.score([everything - set(order[:n]) for n in counts], batch, reference)
        passing = [n for n, f in zip(counts, figures) if f.cosine_mean >= threshold]
        if passing:
            return passing[0]
    return len(order)


def sensitivity_variant(
    source: ModelSource,
    precision: str,
    *,
    profile: str | Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    images: int = RANKING_IMAGES,
    mode: Mode = "alone",
    threads: int | None = None,
    progress: Progress = lambda step: None,
) -> SensitivityReport:
    """Rank every site the profile quantizes by the damage it does to the output alone (or the
    damage left when it alone stays in high precision), on `images` parity inputs."""
    start = time.perf_counter()
    if not get_precision(precision).calibrated:
        raise UsageError(f"sensitivity ranks the Q/DQ sites of int8 and fp8; {precision} has none")
    chosen = resolve_request(source, precision, profile, calib, samples)
    variant = get_variant(source.variant)
    progress("reading calibration images")
    calibration = read_calibration(chosen, variant.image_size)
    progress("loading weights")
    loaded = load_source(source)
    fp32 = ensure_onnx(loaded, export_options(chosen), progress=progress)
    progress("computing the torch outputs to score against")
    inputs = synthetic_inputs(variant, images)
    reference = reference_outputs(OutputHead.for_options(loaded.model, fp32.manifest["options"]).eval(), inputs.batch)
    with artifacts.staging(fp32.path.with_name(f"{fp32.path.stem}.{precision}.sensitivity")) as scratch:
        progress(f"calibrating {precision} Q/DQ sites of {fp32.path.name}")
        calibrated = _calibrate(fp32, precision, chosen, calibration, scratch, progress)
        progress("building the emulation model")
        emulator = Emulator(convert.smoothed_model(calibrated), calibrated.sites, calibrated.ranges.amax, precision,
                            scratch, _external(fp32), threads)
        baselines, scores = sensitivity.rank(emulator, mode, inputs.batch, reference,
                                             lambda done, total: progress(f"scoring: {done}/{total} configurations"))
    return SensitivityReport(
        variant.name, precision, mode, images, chosen.threshold(precision), round(time.perf_counter() - start, 1),
        peak_rss(calibrated), {name: {"cosine_mean": f.cosine_mean, "cosine_min": f.cosine_min, "max_abs": f.max_abs}
                        for name, f in baselines.items()}, scores)


def peak_rss(calibrated: convert.Calibrated | None) -> dict[str, float]:
    """The largest resident set (MB) this process and the calibration worker each reached, read
    from the kernel's high-water marks, so no transient peak is missed (as `/usr/bin/time -v`
    reports the larger of the two)."""
    return {"main": round(peak_rss_mb(), 1),
            **({"calibration worker": calibrated.ranges.peak_rss_mb} if calibrated is not None else {})}


def _manifest(loaded, fp32: ExportResult, precision, profile: Profile, calibration,
              calibrated: convert.Calibrated | None) -> dict:
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
        "smoothing": calibrated.smoothing_summary() if calibrated is not None else None,
        "inputs": fp32.manifest["inputs"],
        "outputs": fp32.manifest["outputs"],
        "external_data": fp32.manifest["external_data"],
        "versions": versions(("pe-export", "torch", "onnx", "onnxruntime", "nvidia-modelopt")),
    }
