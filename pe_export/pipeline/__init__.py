"""One command's plan: the chain fp32 ONNX -> precision ONNX -> TensorRT engine / OpenVINO IR, and the
on-device programs lowered from the weights beside it, each step made or reused once and handed to the next.

A step is reused when its manifest's key matches: the key holds the upstream step's identity (a digest
over the upstream's key and all of its files), so new weights anywhere upstream reach every artifact
below. The plan carries the digests it computed, so no file is hashed twice in one command, and it
loads the weights only when a step must be made (a fully reused chain never loads them, nor torch).
Lifetime: one command (or one worker of it); nothing is kept between commands but the artifacts.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Union

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.edge.spec import ProgramRequest
from pe_export.manifests import ExportManifest, IRManifest, PrecisionManifest, ProgramManifest
from pe_export.onnx.spec import ExportResult, default_output_path, export_key, resolve
from pe_export.openvino.ir import Reference, ir_key, ir_path, make_ir, source_precision, torch_reference
from pe_export.precision.profiles import Profile
from pe_export.precision.spec import calibration_key, export_options, precision_key, precision_path
from pe_export.precisions import get_precision
from pe_export.report import PrecisionResult
from pe_export.source import ModelSource, WeightSource
from pe_export.variants import Variant, get_variant

if TYPE_CHECKING:
    from pe_export.model import LoadedModel
    from pe_export.precision.calibration import CalibrationSet
    from pe_export.runners.tensorrt_env import Gpu
    from pe_export.trt.build import BuildSettings, EngineResult

Progress = Callable[[str], None]
OnnxResult = Union[ExportResult, PrecisionResult]


def find_weights(source: ModelSource, digests: Digests) -> WeightSource:
    """Where the source's weights come from, without building the model: the seed, or the checkpoint (a
    hub file from the cache or the hub) with its weights' digest, kept in `digests`. Torch reads a
    checkpoint's tensors for it; a random-init source never imports torch."""
    if source.random_init:
        return WeightSource(None, None, source.seed)
    from pe_export.hub import checkpoint_files, resolve_checkpoint

    def digest() -> tuple[str, int]:
        from pe_export.model.checkpoint import read_checkpoint, weights_digest

        return weights_digest(read_checkpoint(path))

    path = resolve_checkpoint(get_variant(source.variant), source.checkpoint)
    return WeightSource(path, digests.derived(checkpoint_files(path), digest), None)


class Plan:
    """The artifacts of one source and profile, each made or reused once per plan.

    `loaded`: weights the caller has already loaded (they are never freed by an export then);
    otherwise the plan loads them itself when a step must be made, and an export that frees them
    (so that onnxruntime's copy does not sit beside torch's) makes the plan load them again later.
    `root`: the folder whose `<variant>/` subfolder holds the artifacts' default paths.
    """

    def __init__(self, source: ModelSource, profile: Profile, progress: Progress = lambda step: None,
                 digests: Digests | None = None, loaded: LoadedModel | None = None, root: Path = artifacts.ROOT):
        self.source, self.profile, self.progress, self.root = source, profile, progress, root
        self.variant: Variant = get_variant(source.variant)
        self.digests = digests or Digests()
        self._loaded, self._owns_weights = loaded, loaded is None
        self._weight_source: WeightSource | None = loaded.source if loaded else None
        self._steps: dict[tuple, object] = {}
        self._calibration: CalibrationSet | None = None

    @classmethod
    def of(cls, loaded: LoadedModel, profile: Profile, progress: Progress = lambda step: None,
           digests: Digests | None = None, root: Path = artifacts.ROOT) -> "Plan":
        """A plan over weights the caller has loaded."""
        source = ModelSource(loaded.variant, loaded.source.checkpoint, loaded.source.checkpoint is None,
                             loaded.source.seed or 0)
        return cls(source, profile, progress, digests, loaded, root)

    # ---- weights ------------------------------------------------------------------------------------

    def weight_source(self) -> WeightSource:
        """Where the weights come from (a checkpoint's digest computed once), without building the model."""
        if self._weight_source is None:
            self._weight_source = find_weights(self.source, self.digests)
        return self._weight_source

    def weights(self) -> LoadedModel:
        """The loaded weights, loaded once (again after an export freed them)."""
        if self._loaded is None:
            from pe_export.model import load_source

            self.progress("loading weights")
            self._loaded = load_source(self.source, self.digests)
        return self._loaded

    # ---- steps: each `X()` is made or reused once; `reused_X()` only looks (None: something must be made) ----

    def fp32(self) -> ExportResult:
        """The fp32 ONNX of the profile's export options."""
        return self._once(("fp32",), lambda: self.reused_fp32() or self._export())

    def reused_fp32(self) -> ExportResult | None:
        if ("fp32",) in self._steps:
            return self._steps[("fp32",)]  # type: ignore[return-value]
        path = self._fp32_path()
        key = export_key(self.variant, self.weight_source(), resolve(export_options(self.profile), self.variant))
        manifest = artifacts.reuse(path, key, self.digests, self.progress, remake="exporting")
        return self._keep(("fp32",), ExportResult(path, manifest) if isinstance(manifest, ExportManifest) else None)

    def _export(self) -> ExportResult:
        from pe_export.onnx.export import export_onnx

        loaded = self.weights()
        if self._owns_weights:
            self._loaded = None  # the export frees them; a later step loads them again
        return export_onnx(loaded, export_options(self.profile), self._fp32_path(), self.progress, self.digests,
                           owns_weights=self._owns_weights)

    def precision(self, precision: str, output: Path | None = None) -> OnnxResult:
        """The ONNX of a precision (fp32: the export itself), made from this plan's fp32 ONNX."""
        if get_precision(precision).kind == "reference":
            return self.fp32()
        step = ("precision", precision, output)
        return self._once(step, lambda: self._reused_precision(self.fp32(), precision, output)
                          or self.make_precision(precision, output))

    def reused_precision(self, precision: str, output: Path | None = None) -> OnnxResult | None:
        if get_precision(precision).kind == "reference":
            return self.reused_fp32()
        fp32 = self.reused_fp32()
        return self._reused_precision(fp32, precision, output) if fp32 else None

    def _reused_precision(self, fp32: ExportResult, precision: str, output: Path | None) -> PrecisionResult | None:
        step = ("precision", precision, output)
        if step in self._steps:
            return self._steps[step]  # type: ignore[return-value]
        path = Path(output) if output else precision_path(fp32.path, precision)
        key = precision_key(fp32, precision, self.profile, self.digests)
        manifest = artifacts.reuse(path, key, self.digests, self.progress)
        return self._keep(step, PrecisionResult.recorded(path, manifest) if isinstance(manifest, PrecisionManifest)
                          else None)

    def make_precision(self, precision: str, output: Path | None = None) -> PrecisionResult:
        """Make the precision ONNX whatever is there (its fp32 ONNX reused as usual)."""
        from pe_export.precision.quantize import make_precision

        fp32 = self.fp32()
        calibration = self.calibration() if get_precision(precision).calibrated else None
        result = make_precision(fp32, self.weights(), precision, self.profile, calibration, output, self.progress,
                                self.digests)
        return self._keep(("precision", precision, output), result)

    def calibration(self) -> CalibrationSet:
        """The profile's calibration set, read once."""
        if self._calibration is None:
            from pe_export.precision.quantize import read_calibration

            self.progress("reading calibration images")
            self._calibration = read_calibration(self.profile, self.variant.image_size)
        return self._calibration

    def engine(self, precision: str, settings: BuildSettings, output: Path | None = None,
               gpu: Gpu | None = None) -> EngineResult:
        """The TensorRT engine of a precision's ONNX for these settings (reused only where this TensorRT
        and GPU may run it)."""
        from pe_export.trt.engine import ensure_engine

        return self._once(("engine", precision, settings.model_dump_json(), output), lambda: ensure_engine(
            self.precision(precision), settings, output, gpu, self.progress, self.digests))

    def ir(self, precision: str, output: Path | None = None) -> PrecisionResult:
        """The OpenVINO IR of a precision (fp32 and bf16 from the fp32 ONNX, int8 from the Q/DQ ONNX), its
        torch reference computed in this process."""
        return self._once(("ir", precision, output), lambda: self._reused_ir(
            self.precision(source_precision(precision)), precision, output) or self.make_ir(
            self.reference(precision), precision, output))

    def reused_ir(self, precision: str, output: Path | None = None) -> PrecisionResult | None:
        onnx = self.reused_precision(source_precision(precision))
        return self._reused_ir(onnx, precision, output) if onnx else None

    def _reused_ir(self, onnx: OnnxResult, precision: str, output: Path | None) -> PrecisionResult | None:
        path = Path(output) if output else self.ir_path(precision)
        manifest = artifacts.reuse(path, ir_key(onnx.manifest.identity, precision, self.profile), self.digests,
                                   self.progress)
        return self._keep(("ir", precision, output),
                          PrecisionResult.recorded(path, manifest) if isinstance(manifest, IRManifest) else None)

    def reference(self, precision: str) -> Reference:
        """torch fp32's outputs on the parity inputs, for the IR of a precision (its ONNX made first)."""
        onnx = self.precision(source_precision(precision))  # may free the weights before they are used here
        return torch_reference(self.weights(), onnx, self.progress)

    def make_ir(self, reference: Reference, precision: str, output: Path | None = None,
                earlier_peak_mb: float = 0.0) -> PrecisionResult:
        """Convert and prove the IR from a reference computed here or in a worker."""
        path = Path(output) if output else self.ir_path(precision)
        return self._keep(("ir", precision, output), make_ir(reference, precision, self.profile, path, self.progress,
                                                             time.perf_counter(), self.digests, earlier_peak_mb))

    def ir_path(self, precision: str) -> Path:
        """Where the IR of a precision goes by default: beside the profile's fp32 ONNX."""
        return ir_path(self._fp32_path(), precision)

    def program(self, precision: str, delegate: str = "xnnpack", output: Path | None = None) -> PrecisionResult:
        """The ExecuTorch program of the profile's output head in a precision, for a delegate."""
        return self._once(("program", precision, delegate, output), lambda: self.reused_program(
            precision, delegate, output) or self._make_program(precision, delegate, output))

    def reused_program(self, precision: str, delegate: str = "xnnpack",
                       output: Path | None = None) -> PrecisionResult | None:
        request = self.program_request(precision, delegate)
        path = Path(output) if output else request.path(self.variant, self.root)
        calibration = calibration_key(self.profile, self.digests) if request.calibrated else None
        key = request.key(self.variant, self.weight_source(), self.profile.threshold(precision), calibration)
        manifest = artifacts.reuse(path, key, self.digests, self.progress)
        return PrecisionResult.recorded(path, manifest) if isinstance(manifest, ProgramManifest) else None

    def _make_program(self, precision: str, delegate: str, output: Path | None) -> PrecisionResult:
        from pe_export.edge.executorch import export_executorch

        request = self.program_request(precision, delegate)
        path = Path(output) if output else request.path(self.variant, self.root)
        calibration = self.calibration() if request.calibrated else None
        return export_executorch(self.weights(), request, self.profile, path, self.progress, self.digests, calibration)

    def program_request(self, precision: str, delegate: str) -> ProgramRequest:
        """A program of the output head this profile's ONNX export carries."""
        return ProgramRequest(resolve(export_options(self.profile), self.variant), precision, delegate)

    def _fp32_path(self) -> Path:
        return default_output_path(self.variant, resolve(export_options(self.profile), self.variant), self.root)

    def _keep(self, step: tuple, result):
        """Remember a step's result (None: nothing to remember) and return it."""
        if result is not None:
            self._steps[step] = result
        return result

    def _once(self, step: tuple, make: Callable[[], object]):
        if step not in self._steps:
            self._steps[step] = make()
        return self._steps[step]
