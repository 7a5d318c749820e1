"""An ExecuTorch program (.pte) of one output head: `torch.export` of the export-friendly tower, lowered
to a delegate (XNNPACK, or Core ML for Apple), proven on ExecuTorch's own runtime against torch fp32
before it takes its name."""

from __future__ import annotations

import collections
import copy
import errno
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.edge.spec import ProgramRequest
from pe_export.errors import CheckFailed, ToolFailed
from pe_export.manifests import ProfileRef, ProgramManifest, Weights, manifest_path, seal, write_manifest
from pe_export.model import LoadedModel
from pe_export.model.edge import EdgeHead
from pe_export.model.head import OutputHead
from pe_export.precision.calibration import CalibrationSet
from pe_export.precision.profiles import Profile
from pe_export.precision.spec import calibration_key
from pe_export.quiet import quiet
from pe_export.report import ParityRow, PrecisionResult
from pe_export.runners.device import cpu_name
from pe_export.validate import EXPORT_SEED, artifact_parity, reference_outputs, seeded_batch, synthetic_inputs
from pe_export.versions import versions

Progress = Callable[[str], None]
LIBRARIES = ("pe-export", "torch", "executorch")
PARITY_INPUTS = "synthetic, seed 1 (apart from calibration)"


class HalfPrecision(nn.Module):
    """A module computing in fp16 behind an fp32 interface: the program's input and output stay fp32, as
    every runner's do; the casts run in the delegate."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.module(pixel_values.half()).float()


class TanhGelu(nn.Module):
    """GELU in its tanh form, from ops XNNPACK runs in fp16 (it has no fp16 GELU: each one would leave the
    delegate, with two casts). Within 3e-4 of the exact GELU, below fp16's own rounding at that scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1.0 + torch.tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))


def half_copy(module: nn.Module) -> nn.Module:
    """An fp16 copy of a module, its GELUs in the tanh form, that holds the fp32 tensors only once: each
    tensor is cast straight into the copy (`deepcopy(...).half()` would hold a second fp32 copy first)."""
    memo: dict[int, object] = {}
    for tensor in [*module.parameters(), *module.buffers()]:
        half = tensor.detach().half()
        memo[id(tensor)] = nn.Parameter(half, requires_grad=False) if isinstance(tensor, nn.Parameter) else half
    half_module = copy.deepcopy(module, memo)
    for parent in half_module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.GELU):
                setattr(parent, name, TanhGelu())
    return half_module


def lowerable(loaded: LoadedModel, request: ProgramRequest) -> tuple[OutputHead, nn.Module]:
    """The reference head and the module to lower for the request: the export-friendly tower, in fp16
    for XNNPACK's fp16 (Core ML takes fp32 graphs and computes in the precision it is told)."""
    spec = request.spec
    head = OutputHead(loaded.model, spec.output, spec.layer, spec.strip_cls).eval()
    edge = EdgeHead(head).eval()
    if request.precision == "fp16" and request.delegate == "xnnpack":
        return head, HalfPrecision(half_copy(edge)).eval()
    return head, edge


def lower(module: nn.Module, example: torch.Tensor, request: ProgramRequest, calibration: np.ndarray | None = None):
    """`torch.export` (int8: quantized on the calibration images), then ExecuTorch's edge dialect with
    the delegate's partitions lowered to it."""
    from executorch.exir import to_edge_transform_and_lower

    if request.calibrated:
        from pe_export.edge.quantize import quantized_program

        program = quantized_program(module, example, calibration)
    else:
        with torch.no_grad():
            program = torch.export.export(module, (example,))
    return to_edge_transform_and_lower(program, partitioner=[_partitioner(request)])


def _partitioner(request: ProgramRequest):
    if request.delegate == "coreml":
        import coremltools as ct
        from executorch.backends.apple.coreml.compiler import CoreMLBackend
        from executorch.backends.apple.coreml.partition import CoreMLPartitioner

        # Core ML's default is fp16 compute: an fp32 program asks for fp32
        computes = ct.precision.FLOAT16 if request.precision == "fp16" else ct.precision.FLOAT32
        return CoreMLPartitioner(compile_specs=CoreMLBackend.generate_compile_specs(compute_precision=computes))
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    return XnnpackPartitioner()


def delegation(lowered) -> dict:
    """How much of the graph the delegate took: its partitions, and every op left to ExecuTorch's portable
    kernels (an empty `outside` is one delegated graph)."""
    ops = collections.Counter(
        node.target.__name__ if hasattr(node.target, "__name__") else str(node.target)
        for node in lowered.exported_program().graph.nodes if node.op == "call_function")
    partitions = ops.pop("executorch_call_delegate", 0)
    ops.pop("getitem", None)
    return {"partitions": partitions, "outside": dict(ops.most_common())}


def export_executorch(loaded: LoadedModel, request: ProgramRequest, profile: Profile, path: Path,
                      progress: Progress = lambda step: None, digests: Digests | None = None,
                      calibration: CalibrationSet | None = None) -> PrecisionResult:
    """Lower, write and prove the program at `path` with its manifest; nothing appears at `path` unless
    it runs on ExecuTorch's runtime within the profile's threshold (a Core ML program, which cannot run
    here, is written converted only and says so). An int8 program is calibrated on `calibration`."""
    from pe_export.precision.quantize import PARITY_SAMPLES

    start = time.perf_counter()
    digests = digests or Digests()
    variant = loaded.variant
    artifacts.prepare_destination(path)
    head, module = lowerable(loaded, request)
    progress("computing torch fp32 reference outputs")
    inputs = synthetic_inputs(variant, PARITY_SAMPLES)
    reference = reference_outputs(head, inputs.batch)
    threshold = profile.threshold(request.precision)
    with artifacts.staging(path) as scratch:
        staged = scratch / path.name
        progress(f"exporting {variant.name} ({request.precision}"
                 f"{f', calibrating on {len(calibration.batch)} images' if request.calibrated else ''}) "
                 f"and lowering to {request.delegate}")
        example = torch.from_numpy(seeded_batch(variant, request.batch, EXPORT_SEED))
        with quiet("executorch", "torch.export", "torchao"):
            lowered = lower(module, example, request, calibration.batch if request.calibrated else None)
            taken = delegation(lowered)
            program = lowered.to_executorch()
        del module, lowered
        _write(program, staged, path)
        del program
        if request.runs_here:
            progress("proving parity: ExecuTorch runtime against torch fp32")
            row = artifact_parity(staged, reference, inputs, threshold, precision=request.precision,
                                  backend="executorch", chunk=request.batch)
        else:
            row = ParityRow(artifact=path.name, backend=f"executorch-{request.delegate}", precision=request.precision,
                            cosine_mean=None, cosine_min=None, max_abs=None, rel_l2=None, threshold=threshold,
                            passed=None, note=f"converted only: {request.delegate} programs run on Apple devices, "
                                              "not here; parity is not claimed")
        fields = {
            "variant": variant.name, "precision": request.precision, "weights": Weights(**loaded.source.as_dict()),
            "options": request.options(), **_tensors(variant, request, reference.shape[1:]),
            "delegate": request.delegate, "runs_here": request.runs_here, "delegation": taken,
            "calibration": calibration.describe() if request.calibrated else None,
            "device": cpu_name(), "profile": ProfileRef(name=profile.name, path=str(profile.path) if profile.path else None),
            "parity": {**row.model_dump(), "inputs": PARITY_INPUTS}, "seconds": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "versions": versions(LIBRARIES),
        }
        key = request.key(variant, loaded.source, threshold,
                          calibration_key(profile, digests) if request.calibrated else None)
        manifest = ProgramManifest(**seal(fields, key, digests.files([staged])))
        manifest_file = scratch / manifest_path(path).name
        write_manifest(manifest_file, manifest)
        if row.passed is False:
            raise CheckFailed(
                f"the {request.precision} program misses its parity threshold on ExecuTorch: token cosine mean "
                f"{row.cosine_mean:.6f} < {threshold} (min {row.cosine_min:.6f}, max abs {row.max_abs:.3g}); "
                "nothing was written")
        artifacts.publish([staged, manifest_file], path)
    return PrecisionResult(path, manifest, row)


def _write(program, staged: Path, destination: Path) -> None:
    try:
        with open(staged, "wb") as file:
            program.write_to_file(file)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise artifacts.disk_full(destination) from None
        raise ToolFailed(f"could not write {staged.name}: {exc}") from None


def _tensors(variant, request: ProgramRequest, output_shape: tuple[int, ...]) -> dict:
    size = variant.image_size
    return {"inputs": [{"name": "pixel_values", "dtype": "float32", "shape": [request.batch, 3, size, size]}],
            "outputs": [{"name": request.spec.output, "dtype": "float32", "shape": [request.batch, *output_shape]}]}
