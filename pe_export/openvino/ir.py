"""OpenVINO IR (.xml/.bin) of the fp32 or int8 Q/DQ ONNX, proven on OpenVINO against torch fp32 before it
takes its name.

The conversion and its proof run in a worker process (`pe_export.openvino.worker`), so that what
OpenVINO holds goes back to the system when it ends; it never imports torch. The torch fp32 outputs
it is proven against come in a `Reference`, computed where the weights are (in this process, or in a
torch worker of the command). The export's peak is therefore OpenVINO's own: an fp32 IR's compiled
model holds the IR's constants beside the CPU plugin's repacked weights.
"""

from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Union

import numpy as np

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import CheckFailed, ToolFailed, Unavailable
from pe_export.manifests import IRManifest, ProfileRef, Upstream, Weights, manifest_path, seal, write_manifest
from pe_export.memory import rss_mb
from pe_export.onnx.spec import ExportResult
from pe_export.precision.profiles import Profile
from pe_export.precisions import get_precision
from pe_export.processes import run_worker
from pe_export.report import ParityRow, PrecisionResult
from pe_export.runners.openvino import inference_precision
from pe_export.validate import ParityInputs
from pe_export.versions import versions

if TYPE_CHECKING:
    from pe_export.model import LoadedModel

Progress = Callable[[str], None]
WORKER = "pe_export.openvino.worker"
SourceOnnx = Union[ExportResult, PrecisionResult]  # the ONNX an IR is converted from
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
    """What an IR is made from: the ONNX to convert (where it is, what it is, its output options and
    its graph's inputs and outputs), where the weights came from, and torch fp32's outputs on the
    parity inputs."""

    variant: str
    source: Upstream
    options: dict
    tensors: dict  # {"inputs": [...], "outputs": [...]} as the ONNX manifest records them
    inputs: ParityInputs
    outputs: np.ndarray
    weights: dict
    device: str  # the CPU, as reports name it

    @property
    def onnx_path(self) -> Path:
        return Path(self.source.path)

    def save(self, folder: Path) -> None:
        np.save(folder / _INPUTS, self.inputs.batch)
        np.save(folder / _OUTPUTS, self.outputs)
        (folder / _REFERENCE).write_text(json.dumps({
            "variant": self.variant, "source": self.source.model_dump(), "options": self.options,
            "tensors": self.tensors,
            "names": self.inputs.names, "weights": self.weights, "device": self.device}))

    @classmethod
    def load(cls, folder: Path) -> "Reference":
        fields = json.loads((folder / _REFERENCE).read_text())
        inputs = ParityInputs(np.load(folder / _INPUTS), fields.pop("names"), real_images=False)
        return cls(**{**fields, "source": Upstream(**fields["source"])}, inputs=inputs,
                   outputs=np.load(folder / _OUTPUTS))


def source_precision(precision: str) -> str:
    """The ONNX an IR is converted from: the Q/DQ graph for int8, the fp32 graph for fp32 and bf16
    (which differ only in the precision OpenVINO compiles them for)."""
    return precision if get_precision(precision).calibrated else "fp32"


def ir_path(fp32: Path, precision: str) -> Path:
    """Beside the profile's fp32 ONNX: `<variant>.<target>.<precision>.xml`."""
    return fp32.with_name(f"{fp32.stem}.{precision}.xml")


def torch_reference(loaded: LoadedModel, onnx: SourceOnnx, progress: Progress) -> Reference:
    """torch fp32's outputs on the parity inputs, for the IR converted from `onnx`."""
    from pe_export.model.head import OutputHead
    from pe_export.precision.quantize import PARITY_SAMPLES
    from pe_export.runners.device import cpu_name
    from pe_export.validate import reference_outputs, synthetic_inputs

    progress("computing torch fp32 reference outputs")
    inputs = synthetic_inputs(loaded.variant, PARITY_SAMPLES)
    outputs = reference_outputs(OutputHead.for_options(loaded.model, onnx.manifest.options).eval(), inputs.batch)
    tensors = onnx.manifest.model_dump(mode="json", include={"inputs", "outputs"})
    return Reference(loaded.variant.name, Upstream(path=str(onnx.path), identity=onnx.manifest.identity),
                     onnx.manifest.options, tensors, inputs, outputs, loaded.source.as_dict(), cpu_name())


def make_ir(reference: Reference, precision: str, profile: Profile, path: Path, progress: Progress, started: float,
            digests: Digests | None = None, earlier_peak_mb: float = 0.0) -> PrecisionResult:
    """Convert and prove the IR in a worker (OpenVINO's memory goes back to the system when it ends),
    then publish it. `earlier_peak_mb`: the most this process and an earlier worker held together."""
    artifacts.prepare_destination(path)
    fields = _manifest(reference, precision, profile)
    key = ir_key(reference.source.identity, precision, profile)
    digests = digests or Digests()
    with artifacts.staging(path) as scratch:
        reference.save(scratch)
        held = rss_mb()
        job = {"job": "ir", "destination": str(path), "precision": precision, "threshold": profile.threshold(precision)}
        ir_peak = run_worker(WORKER, job, scratch, "the IR conversion", progress, env=_ALLOCATOR)
        row = ParityRow.model_validate_json((scratch / PARITY).read_text())
        model_files = [scratch / path.name, (scratch / path.name).with_suffix(".bin")]
        own_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        fields.update(parity={**row.model_dump(), "inputs": "synthetic, seed 1 (apart from calibration)"},
                      seconds=round(time.perf_counter() - started, 1),
                      peak_rss_mb=round(max(own_peak, earlier_peak_mb, held + ir_peak), 1))
        manifest = IRManifest(**seal(fields, key, digests.files(model_files)))
        manifest_file = scratch / manifest_path(path).name
        write_manifest(manifest_file, manifest)
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
        raise ToolFailed(f"OpenVINO could not write {xml.name}: {str(exc).strip().splitlines()[-1]}") from None


def ir_key(source_identity: str, precision: str, profile: Profile) -> dict:
    """Everything an IR depends on: its source ONNX's identity, the precision it computes in, its
    threshold and OpenVINO."""
    return {"source_onnx": source_identity, "precision": precision,
            "inference_precision": inference_precision(precision), "threshold": profile.threshold(precision),
            "openvino": versions(("openvino",))["openvino"]}


def _manifest(reference: Reference, precision: str, profile: Profile) -> dict:
    return {
        "variant": reference.variant,
        "precision": precision,
        "inference_precision": inference_precision(precision),
        "device": reference.device,  # where the parity below was proven
        "weights": Weights(**reference.weights),
        "options": reference.options,
        **reference.tensors,
        "source_onnx": reference.source,
        "profile": ProfileRef(name=profile.name, path=str(profile.path) if profile.path else None),
        "versions": versions(("pe-export", "torch", "onnx", "openvino")),
    }
