"""`pe-export openvino`: an OpenVINO IR (.xml/.bin) of the fp32 or int8 Q/DQ ONNX (made or reused
through the earlier stages), proven on OpenVINO against torch fp32 before it takes its name."""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Callable

from pe_export import artifacts
from pe_export.errors import CheckFailed, Unavailable
from pe_export.memory import free_weights, release_memory
from pe_export.model import LoadedModel, ModelSource
from pe_export.model.head import OutputHead
from pe_export.onnx.export import default_output_path, resolve
from pe_export.precision.convert import require_tools
from pe_export.precision.profiles import Profile, cpu_profile, resolve_profile
from pe_export.precision.quantize import (PARITY_SAMPLES, PrecisionResult, export_options, precision_onnx,
                                         require_real_calibration)
from pe_export.precisions import get_precision
from pe_export.report import ParityRow
from pe_export.runners.device import cpu_name
from pe_export.runners.openvino import inference_precision, require_precision
from pe_export.validate import artifact_parity, reference_outputs, synthetic_inputs
from pe_export.variants import Variant, get_variant
from pe_export.versions import versions


def source_precision(precision: str) -> str:
    """The ONNX an IR is converted from: the Q/DQ graph for int8, the fp32 graph for fp32 and bf16
    (which differ only in the precision OpenVINO compiles them for)."""
    return precision if get_precision(precision).calibrated else "fp32"


def ir_path(variant: Variant, profile: Profile, precision: str) -> Path:
    """Beside the profile's fp32 ONNX: `<variant>.<target>.<precision>.xml`."""
    fp32 = default_output_path(variant, resolve(export_options(profile), variant))
    return fp32.with_name(f"{fp32.stem}.{precision}.xml")


def openvino_variant(
    source: ModelSource,
    precision: str | None = None,
    *,
    profile: str | Path | None = None,
    calib: str | None = None,
    samples: int | None = None,
    output: Path | None = None,
    progress: Callable[[str], None] = lambda step: None,
) -> PrecisionResult:
    """Check the request, load the weights, then make the IR (default precision: the one the profile
    deploys on OpenVINO, else fp32).

    The torch weights are freed once the reference outputs are computed, so that torch and OpenVINO
    never hold the weights at the same time.
    """
    variant = get_variant(source.variant)
    chosen = (resolve_profile(profile, variant) if profile else cpu_profile(variant.name)).with_calibration(calib, samples)
    precision = precision or chosen.deployed_precision("openvino") or "fp32"
    require_precision(precision)
    chosen.require(precision)
    require_tools(source_precision(precision))
    require_real_calibration(source, chosen, source_precision(precision), calib)
    if output:
        artifacts.prepare_destination(Path(output))
    progress("loading weights")
    loaded = source.load()
    onnx_path = precision_onnx(loaded, source_precision(precision), chosen, progress)
    return _make_ir(loaded, precision, chosen, onnx_path, output, progress, owns_weights=True)


def ensure_ir(loaded: LoadedModel, precision: str, profile: Profile,
              progress: Callable[[str], None] = lambda step: None) -> PrecisionResult:
    """The IR of a precision for this profile: reused when its key matches (same source ONNX,
    inference precision, threshold and OpenVINO), else made, saying why."""
    require_precision(precision)
    onnx_path = precision_onnx(loaded, source_precision(precision), profile, progress=progress)
    path = ir_path(loaded.variant, profile, precision)
    manifest = artifacts.reuse(path, ir_key(onnx_path, precision, profile), progress)
    if manifest is not None:
        return PrecisionResult(path, manifest, ParityRow.recorded(manifest["parity"]))
    return _make_ir(loaded, precision, profile, onnx_path, path, progress, owns_weights=False)


def _make_ir(loaded: LoadedModel, precision: str, profile: Profile, onnx_path: Path, output: Path | None,
             progress: Callable[[str], None], owns_weights: bool) -> PrecisionResult:
    start = time.perf_counter()
    options = artifacts.read_manifest(onnx_path)["options"]
    path = Path(output) if output else ir_path(loaded.variant, profile, precision)
    artifacts.prepare_destination(path)
    progress("computing torch fp32 reference outputs")
    inputs = synthetic_inputs(loaded.variant, PARITY_SAMPLES)
    reference = reference_outputs(OutputHead.for_options(loaded.model, options).eval(), inputs.batch)
    manifest = _manifest(loaded, precision, profile, onnx_path, options)
    if owns_weights:  # the CLI: OpenVINO's copy replaces the torch weights
        free_weights(loaded.model)
    with artifacts.staging(path) as scratch:
        staged = scratch / path.name
        progress(f"converting {onnx_path.name} to OpenVINO IR")
        _convert(onnx_path, staged, compress_to_fp16=precision == "bf16")
        release_memory()
        model_files = [staged, staged.with_suffix(".bin")]
        manifest_file = scratch / artifacts.manifest_path(path).name
        artifacts.write_json(manifest_file, manifest)  # parity reads the artifact's precision from it
        progress(f"proving {precision} parity on OpenVINO")
        # one image at a time: the compiled model holds 1.8x the fp32 weights already
        row = artifact_parity(staged, reference, inputs, profile.threshold(precision), chunk=1)
        manifest.update(parity={**row.model_dump(), "inputs": "synthetic, seed 1 (apart from calibration)"},
                        seconds=round(time.perf_counter() - start, 1), files=artifacts.file_digests(model_files),
                        peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1))
        artifacts.write_json(manifest_file, manifest)
        if row.passed is False:
            raise CheckFailed(
                f"the {precision} IR misses its parity threshold on OpenVINO: token cosine mean {row.cosine_mean:.5f} "
                f"< {row.threshold} (min {row.cosine_min:.5f}, max abs {row.max_abs:.3g}); nothing was written"
            )
        artifacts.publish([*model_files, manifest_file], path)
    return PrecisionResult(path, manifest, row)


def _convert(onnx_path: Path, xml: Path, compress_to_fp16: bool) -> None:
    """ONNX to IR as OpenVINO's converter makes it: its common (MOC) transformations, and every weight's
    Q/DQ pair folded into int8 constants (a quarter of the fp32 file). The steps are called one by one
    because `ov.convert_model` forks the process once per usage-telemetry event (21 per call here): a
    copy of an exporting process that may hold gigabytes.

    A bf16 IR keeps its float weights in fp16 (half the file; fp16 holds 3 more mantissa bits than the
    bf16 the CPU computes in); fp32 and int8 keep theirs in fp32.
    """
    import openvino as ov
    from openvino._offline_transformations import apply_moc_transformations, compress_quantize_weights_transformation

    try:
        model = ov.Core().read_model(onnx_path)
    except RuntimeError as exc:  # OpenVINO's own errors: a stack of "Exception from ..." lines
        raise Unavailable(f"OpenVINO {ov.__version__} cannot read {onnx_path.name}: "
                          f"{str(exc).strip().splitlines()[-1]}; the opset-23 RotaryEmbedding and Attention "
                          "ops need openvino>=2026.4") from None
    apply_moc_transformations(model, cf=False, smart_reshape=True)
    compress_quantize_weights_transformation(model)
    ov.save_model(model, xml, compress_to_fp16=compress_to_fp16)


def ir_key(onnx_path: Path, precision: str, profile: Profile) -> dict:
    """Everything an IR depends on: its source ONNX, the precision it computes in, its threshold and OpenVINO."""
    return {"source_onnx": _sha256(onnx_path), "precision": precision,
            "inference_precision": inference_precision(precision), "threshold": profile.threshold(precision),
            "openvino": versions(("openvino",))["openvino"]}


def _sha256(onnx_path: Path) -> str:
    return artifacts.read_manifest(onnx_path)["files"][onnx_path.name]["sha256"]


def _manifest(loaded: LoadedModel, precision: str, profile: Profile, onnx_path: Path, options: dict) -> dict:
    return {
        "kind": "openvino-ir",
        "variant": loaded.variant.name,
        "precision": precision,
        "inference_precision": inference_precision(precision),
        "device": cpu_name(),  # where the parity below was proven
        "weights": loaded.source.as_dict(),
        "options": options,
        "source_onnx": {"path": str(onnx_path), "sha256": _sha256(onnx_path)},
        "profile": {"name": profile.name, "path": str(profile.path) if profile.path else None},
        "versions": versions(("pe-export", "torch", "onnx", "openvino")),
        "key": ir_key(onnx_path, precision, profile),
    }
