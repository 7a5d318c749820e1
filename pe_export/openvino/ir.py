"""`pe-export openvino`: an OpenVINO IR (.xml/.bin) of the fp32 or int8 Q/DQ ONNX (made or reused
through the earlier stages), proven on OpenVINO against torch fp32 before it takes its name.

The work runs in worker processes (`pe_export.openvino.worker`), one after the other, so that what
one holds is given back before the next starts: the torch half (weights, the ONNX, torch fp32's
outputs on the parity inputs), then OpenVINO's (conversion and parity). The process that runs
`openvino_variant` never imports torch; it only checks the request, passes the reference from one
worker to the next and publishes the IR. The export's peak is therefore OpenVINO's own: an fp32 IR's
compiled model holds the IR's constants beside the CPU plugin's repacked weights.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from pe_export import artifacts
from pe_export.errors import CheckFailed, PeExportError, Unavailable
from pe_export.memory import rss_mb
from pe_export.precision.convert import require_tools
from pe_export.precision.profiles import Profile, cpu_profile, resolve_profile
from pe_export.precisions import get_precision
from pe_export.processes import run_worker
from pe_export.report import ParityRow, PrecisionResult
from pe_export.runners.openvino import inference_precision, require_precision
from pe_export.source import ModelSource
from pe_export.validate import ParityInputs
from pe_export.variants import Variant, get_variant
from pe_export.versions import versions

if TYPE_CHECKING:
    from pe_export.model import LoadedModel

Progress = Callable[[str], None]
WORKER = "pe_export.openvino.worker"
PARITY = "parity.json"  # the IR worker's parity row
_INPUTS, _OUTPUTS, _REFERENCE = "inputs.npy", "outputs.npy", "reference.json"
# The IR worker's allocator: glibc raises its mmap threshold as large blocks are freed, after which
# OpenVINO's many-MB weight and scratch buffers land in per-thread heaps that keep freed pages; a
# fixed 1 MiB threshold maps and unmaps them instead (L14 fp32: 2.47 GiB peak every run, against
# 2.57 or 2.83 GiB by the run's thread timing).
_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}
_FULL_DISK_BYTES = 64 * 2**20  # less free than this after a failed write: the disk filled up


@dataclass(frozen=True)
class Reference:
    """What the torch side hands the IR: the ONNX to convert, the IR's default path, and torch fp32's
    outputs on the parity inputs, with where the weights came from."""

    variant: str
    onnx_path: Path
    ir_path: Path  # beside the profile's fp32 ONNX
    inputs: ParityInputs
    outputs: np.ndarray
    weights: dict
    device: str  # the CPU, as reports name it

    def save(self, folder: Path) -> None:
        np.save(folder / _INPUTS, self.inputs.batch)
        np.save(folder / _OUTPUTS, self.outputs)
        (folder / _REFERENCE).write_text(json.dumps({
            "variant": self.variant, "onnx_path": str(self.onnx_path), "ir_path": str(self.ir_path),
            "names": self.inputs.names, "weights": self.weights, "device": self.device}))

    @classmethod
    def load(cls, folder: Path) -> "Reference":
        fields = json.loads((folder / _REFERENCE).read_text())
        inputs = ParityInputs(np.load(folder / _INPUTS), fields.pop("names"), real_images=False)
        return cls(**{**fields, "onnx_path": Path(fields["onnx_path"]), "ir_path": Path(fields["ir_path"])},
                   inputs=inputs, outputs=np.load(folder / _OUTPUTS))


def source_precision(precision: str) -> str:
    """The ONNX an IR is converted from: the Q/DQ graph for int8, the fp32 graph for fp32 and bf16
    (which differ only in the precision OpenVINO compiles them for)."""
    return precision if get_precision(precision).calibrated else "fp32"


def ir_path(variant: Variant, profile: Profile, precision: str) -> Path:
    """Beside the profile's fp32 ONNX: `<variant>.<target>.<precision>.xml`."""
    from pe_export.onnx.export import default_output_path, resolve
    from pe_export.precision.quantize import export_options

    fp32 = default_output_path(variant, resolve(export_options(profile), variant))
    return fp32.with_name(f"{fp32.stem}.{precision}.xml")


def request_profile(variant: Variant, profile: str | Path | None, calib: str | None, samples: int | None) -> Profile:
    """The profile a request names (default: the variant's CPU profile), with its calibration overrides."""
    chosen = resolve_profile(profile, variant) if profile else cpu_profile(variant.name)
    return chosen.with_calibration(calib, samples)


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
    """Check the request, then let one worker load the weights and make the ONNX and the torch reference,
    and the next make the IR (default precision: the one the profile deploys on OpenVINO, else fp32)."""
    started = time.perf_counter()
    variant = get_variant(source.variant)
    chosen = request_profile(variant, profile, calib, samples)
    precision = precision or chosen.deployed_precision("openvino") or "fp32"
    require_precision(precision)
    chosen.require(precision)
    require_tools(source_precision(precision))
    chosen.require_real_calibration(source_precision(precision), not source.random_init, calib)
    if output:
        artifacts.prepare_destination(Path(output))
    # the reference is staged where the IR goes (by default the variant's artifacts folder), so that a
    # killed run's is removed by the next run there, like any unfinished artifact
    with artifacts.staging(Path(output) if output else artifacts.ROOT / variant.name / "reference") as work:
        held = rss_mb()
        job = {"job": "reference", "source": source.as_job(), "precision": precision,
               "profile": str(profile) if profile else None, "calib": calib, "samples": samples}
        torch_peak = run_worker(WORKER, job, work, "the torch reference", progress)
        reference = Reference.load(work)
    return _make_ir(reference, precision, chosen, Path(output) if output else reference.ir_path, progress, started,
                    earlier_peak_mb=held + torch_peak)


def torch_reference(loaded: LoadedModel, onnx_path: Path, ir_path: Path, progress: Progress) -> Reference:
    """torch fp32's outputs on the parity inputs, for the IR converted from `onnx_path`."""
    from pe_export.model.head import OutputHead
    from pe_export.precision.quantize import PARITY_SAMPLES
    from pe_export.runners.device import cpu_name
    from pe_export.validate import reference_outputs, synthetic_inputs

    progress("computing torch fp32 reference outputs")
    options = artifacts.read_manifest(onnx_path)["options"]
    inputs = synthetic_inputs(loaded.variant, PARITY_SAMPLES)
    outputs = reference_outputs(OutputHead.for_options(loaded.model, options).eval(), inputs.batch)
    return Reference(loaded.variant.name, onnx_path, ir_path, inputs, outputs, loaded.source.as_dict(), cpu_name())


def ensure_ir(loaded: LoadedModel, precision: str, profile: Profile, progress: Progress = lambda step: None) -> PrecisionResult:
    """The IR of a precision for this profile, from weights loaded in this process: reused when its key
    matches (same source ONNX, inference precision, threshold and OpenVINO), else made, saying why."""
    from pe_export.precision.quantize import precision_onnx

    require_precision(precision)
    started = time.perf_counter()
    onnx_path = precision_onnx(loaded, source_precision(precision), profile, progress=progress)
    path = ir_path(loaded.variant, profile, precision)
    manifest = artifacts.reuse(path, ir_key(onnx_path, precision, profile), progress)
    if manifest is not None:
        return PrecisionResult(path, manifest, ParityRow.recorded(manifest["parity"]))
    return _make_ir(torch_reference(loaded, onnx_path, path, progress), precision, profile, path, progress, started)


def _make_ir(reference: Reference, precision: str, profile: Profile, path: Path, progress: Progress,
             started: float, earlier_peak_mb: float = 0.0) -> PrecisionResult:
    """Convert and prove the IR in a worker (OpenVINO's memory goes back to the system when it ends),
    then publish it. `earlier_peak_mb`: the most this process and an earlier worker held together."""
    artifacts.prepare_destination(path)
    manifest = _manifest(reference, precision, profile)
    with artifacts.staging(path) as scratch:
        reference.save(scratch)
        manifest_file = scratch / artifacts.manifest_path(path).name
        artifacts.write_json(manifest_file, manifest)  # parity reads the artifact's precision from it
        held = rss_mb()
        job = {"job": "ir", "destination": str(path), "precision": precision, "threshold": profile.threshold(precision)}
        ir_peak = run_worker(WORKER, job, scratch, "the IR conversion", progress, env=_ALLOCATOR)
        row = ParityRow.model_validate_json((scratch / PARITY).read_text())
        model_files = [scratch / path.name, (scratch / path.name).with_suffix(".bin")]
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        manifest.update(parity={**row.model_dump(), "inputs": "synthetic, seed 1 (apart from calibration)"},
                        seconds=round(time.perf_counter() - started, 1), files=artifacts.file_digests(model_files),
                        peak_rss_mb=round(max(own_peak, earlier_peak_mb, held + ir_peak), 1))
        artifacts.write_json(manifest_file, manifest)
        if row.passed is False:
            raise CheckFailed(
                f"the {precision} IR misses its parity threshold on OpenVINO: token cosine mean {row.cosine_mean:.5f} "
                f"< {row.threshold} (min {row.cosine_min:.5f}, max abs {row.max_abs:.3g}); nothing was written"
            )
        artifacts.publish([*model_files, manifest_file], path)
    return PrecisionResult(path, manifest, row)


def convert(onnx_path: Path, xml: Path, compress_to_fp16: bool, destination: Path) -> None:
    """ONNX to IR as OpenVINO's converter makes it: its common (MOC) transformations, and every weight's
    Q/DQ pair folded into int8 constants (a quarter of the fp32 file). The steps are called one by one
    because `ov.convert_model` forks the process once per usage-telemetry event (21 per call here): a
    copy of an exporting process that may hold gigabytes.

    A bf16 IR keeps its float weights in fp16 (half the file; fp16 holds 3 more mantissa bits than the
    bf16 the CPU computes in); fp32 and int8 keep theirs in fp32. `destination`: where the IR will go
    (`xml` is its staged file), for messages.
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
    try:
        ov.save_model(model, xml, compress_to_fp16=compress_to_fp16)
    except RuntimeError as exc:  # a full disk shows only as "basic_ios::clear: iostream error"
        if shutil.disk_usage(xml.parent).free < _FULL_DISK_BYTES:
            raise artifacts.disk_full(destination) from None
        raise PeExportError(f"OpenVINO could not write {xml.name}: {str(exc).strip().splitlines()[-1]}") from None


def ir_key(onnx_path: Path, precision: str, profile: Profile) -> dict:
    """Everything an IR depends on: its source ONNX, the precision it computes in, its threshold and OpenVINO."""
    return {"source_onnx": _sha256(onnx_path), "precision": precision,
            "inference_precision": inference_precision(precision), "threshold": profile.threshold(precision),
            "openvino": versions(("openvino",))["openvino"]}


def _sha256(onnx_path: Path) -> str:
    return artifacts.read_manifest(onnx_path)["files"][onnx_path.name]["sha256"]


def _manifest(reference: Reference, precision: str, profile: Profile) -> dict:
    onnx_path = reference.onnx_path
    return {
        "kind": "openvino-ir",
        "variant": reference.variant,
        "precision": precision,
        "inference_precision": inference_precision(precision),
        "device": reference.device,  # where the parity below was proven
        "weights": reference.weights,
        "options": artifacts.read_manifest(onnx_path)["options"],
        "source_onnx": {"path": str(onnx_path), "sha256": _sha256(onnx_path)},
        "profile": {"name": profile.name, "path": str(profile.path) if profile.path else None},
        "versions": versions(("pe-export", "torch", "onnx", "openvino")),
        "key": ir_key(onnx_path, precision, profile),
    }
