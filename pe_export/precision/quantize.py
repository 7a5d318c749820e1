"""`pe-export quantize` and `pe-export sensitivity`: a precision variant of the fp32 ONNX, calibrated
per profile and proven on onnxruntime CPU against the torch fp32 model before it takes its normal
name, and the ranking of its quantized sites by the damage each one does."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import CheckFailed
from pe_export.manifests import PrecisionManifest, ProfileRef, Upstream, manifest_path, seal, write_manifest
from pe_export.memory import peak_rss_mb, release_memory
from pe_export.model import LoadedModel
from pe_export.model.head import OutputHead
from pe_export.onnx.spec import EXTERNAL_DATA_BYTES, INPUT_NAME, ExportResult
from pe_export.precision import convert, sensitivity
from pe_export.precision.calibrate import calibration_provider
from pe_export.precision.calibration import CalibrationSet, load_calibration
from pe_export.precision.profiles import Profile
from pe_export.precision.sensitivity import Emulator, Mode, SensitivityReport
from pe_export.precision.spec import precision_key, precision_path
from pe_export.precisions import get_precision
from pe_export.report import ParityRow, PrecisionResult
from pe_export.validate import ParityInputs, artifact_parity, reference_outputs, synthetic_inputs
from pe_export.versions import versions

PARITY_SAMPLES = 4
# Parity inputs a sensitivity ranking is scored on: one image's tokens rank the sites as two do
# (on the Spatial-T16 stress model the damages of 1 and 2 images correlate at 0.9999, same top 5).
RANKING_IMAGES = 1
PREDICTED_PER_STEP = 4  # fallback candidates (1, 2, ... sites kept) emulated per step
Progress = Callable[[str], None]


def read_calibration(profile: Profile, size: int) -> CalibrationSet:
    c = profile.calibration
    return load_calibration(c.source, c.samples, size, c.seed, c.allow_fewer)


def make_precision(
    fp32: ExportResult,
    loaded: LoadedModel,
    precision: str,
    profile: Profile,
    calibration: CalibrationSet | None,
    output: Path | None = None,
    progress: Progress = lambda step: None,
    digests: Digests | None = None,
) -> PrecisionResult:
    """Make the precision variant of `fp32` (whose weights `loaded` holds, for the parity reference)
    and prove it against torch fp32; it takes its name only when it passes."""
    start = time.perf_counter()
    digests = digests or Digests()
    path = Path(output) if output else precision_path(fp32.path, precision)
    artifacts.prepare_destination(path)
    external = _external(fp32)
    threshold = profile.threshold(precision)
    key = precision_key(fp32, precision, profile, digests)
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
        fields = _manifest(loaded, fp32, precision, profile, calibration, calibrated)
        manifest_file = scratch / manifest_path(path).name
        # parity reads the artifact's precision and options from its manifest
        write_manifest(manifest_file, PrecisionManifest(**seal(fields, key, digests.files(model_files))))
        progress(f"proving {precision} parity on onnxruntime CPU")
        inputs = synthetic_inputs(loaded.variant, PARITY_SAMPLES)
        reference = reference_outputs(OutputHead.for_options(loaded.model, fp32.manifest.options).eval(), inputs.batch)
        row = artifact_parity(staged, reference, inputs, threshold)
        if row.passed is False and calibrated is not None and getattr(profile.quantization, precision).auto_exclude:
            fields["auto_exclude"], row = _auto_exclude(calibrated, staged, external, scratch, inputs, reference,
                                                        threshold, progress)
        fields.update(parity={**row.model_dump(), "inputs": "synthetic, seed 1 (apart from calibration)"},
                      qdq_nodes=convert.qdq_count(staged), seconds=round(time.perf_counter() - start, 1),
                      peak_rss_mb=peak_rss(calibrated))
        manifest = PrecisionManifest(**seal(fields, key, digests.files(model_files)))
        write_manifest(manifest_file, manifest)
        if row.passed is False:
            # kept for inspection in a folder of its own, under its normal file names (external data
            # references stay valid), never at the path users and later stages read
            rejected = path.parent / f"{path.name}.rejected"
            rejected.mkdir(exist_ok=True)
            artifacts.publish([*model_files, manifest_file], rejected / path.name)
            raise CheckFailed(
                f"{precision} misses its parity threshold: token cosine mean {row.cosine_mean:.5f} < {row.threshold} "
                f"(min {row.cosine_min:.5f}, max abs {row.max_abs:.3g}); kept for inspection in {rejected}/, "
                "not under its normal name" + ("" if manifest.auto_exclude else
                                               "; `--auto-exclude` keeps the most sensitive sites in high precision")
            )
        artifacts.publish([*model_files, manifest_file], path)
    return PrecisionResult(path, manifest, row)


def _external(fp32: ExportResult) -> bool:
    """Whether the variants of this export keep their weights in external data, as it does (or would)."""
    return fp32.manifest.external_data or fp32.path.stat().st_size > EXTERNAL_DATA_BYTES


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


def rank_sites(fp32: ExportResult, loaded: LoadedModel, precision: str, profile: Profile,
               calibration: CalibrationSet, images: int = RANKING_IMAGES, mode: Mode = "alone",
               threads: int | None = None, progress: Progress = lambda step: None) -> SensitivityReport:
    """Rank every site the profile quantizes in `fp32` by the damage it does to the output alone (or the
    damage left when it alone stays in high precision), on `images` parity inputs."""
    start = time.perf_counter()
    progress("computing the torch outputs to score against")
    inputs = synthetic_inputs(loaded.variant, images)
    reference = reference_outputs(OutputHead.for_options(loaded.model, fp32.manifest.options).eval(), inputs.batch)
    external = _external(fp32)
    with artifacts.staging(fp32.path.with_name(f"{fp32.path.stem}.{precision}.sensitivity")) as scratch:
        progress(f"calibrating {precision} Q/DQ sites of {fp32.path.name}")
        calibrated = _calibrate(fp32, precision, profile, calibration, scratch, progress)
        progress("building the emulation model")
        emulator = Emulator(convert.smoothed_model(calibrated), calibrated.sites, calibrated.ranges.amax, precision,
                            scratch, external, threads)
        baselines, scores = sensitivity.rank(emulator, mode, inputs.batch, reference,
                                             lambda done, total: progress(f"scoring: {done}/{total} configurations"))
    return SensitivityReport(
        loaded.variant.name, precision, mode, images, profile.threshold(precision), round(time.perf_counter() - start, 1),
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
        "variant": loaded.variant.name,
        "precision": precision,
        "weights": fp32.manifest.weights,
        "options": fp32.manifest.options,
        "source_onnx": Upstream(path=str(fp32.path), identity=fp32.manifest.identity),
        "profile": ProfileRef(name=profile.name, path=str(profile.path) if profile.path else None),
        "method": convert.calibration_method(precision, profile.calibration.method) if calibration is not None
        else "autocast",
        "calibration_provider": calibration_provider(profile.calibration.provider) if calibration is not None else None,
        "exclusions": section.model_dump(),
        "calibration": calibration.describe() if calibration is not None else None,
        "smoothing": calibrated.smoothing_summary() if calibrated is not None else None,
        "inputs": fp32.manifest.inputs,
        "outputs": fp32.manifest.outputs,
        "external_data": fp32.manifest.external_data,
        "versions": versions(("pe-export", "torch", "onnx", "onnxruntime", "nvidia-modelopt")),
        # filled in once parity has run
        "parity": {}, "qdq_nodes": {}, "seconds": 0.0, "peak_rss_mb": {},
    }
