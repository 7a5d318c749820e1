"""The runner of a (backend, precision) pair: the torch model itself, or its artifact, made on demand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pe_export.model import LoadedModel
from pe_export.model.head import OutputHead
from pe_export.openvino.ir import ensure_ir
from pe_export.precision.profiles import cpu_profile, resolve_profile
from pe_export.precision.quantize import precision_onnx
from pe_export.runners import BACKENDS, Runner, open_runner

if TYPE_CHECKING:
    from pe_export.bench.bench import BenchSettings

RunnerOpener = Callable[[str, str], Runner]


def onnx_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The ONNX file of a precision under artifacts/, exported (or reused) for onnxruntime."""
    return precision_onnx(loaded, precision, cpu_profile(loaded.variant.name), progress=progress)


def ir_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The OpenVINO IR of a precision under artifacts/, converted (or reused) from the same ONNX files."""
    return ensure_ir(loaded, precision, cpu_profile(loaded.variant.name), progress).path


def engine_artifact(loaded: LoadedModel, precision: str, settings: BenchSettings,
                    progress: Callable[[str], None]) -> Path:
    """The TensorRT engine of a precision from the bench's profile (the variant's default without one),
    its batch range widened to the benchmarked batches: the engine `pe-export trt --profile` and
    `pe-export parity` use for that profile, built once and reused."""
    from pe_export.trt.engine import engine_for_batches

    profile = resolve_profile(settings.profile, loaded.variant)
    return engine_for_batches(loaded, precision, profile, settings.batches, progress).path


def runner_opener(loaded: LoadedModel, settings: BenchSettings,
                  progress: Callable[[str], None] = lambda step: None) -> RunnerOpener:
    def open_pair(backend: str, precision: str) -> Runner:
        runtime = BACKENDS[backend].runtime
        if runtime == "torch":
            head = OutputHead(loaded.model, loaded.variant.default_output)
            return open_runner(head, backend=backend, precision=precision, device=settings.device)
        if runtime == "onnxruntime":
            return open_runner(onnx_artifact(loaded, precision, progress), backend=backend, threads=settings.threads)
        if runtime == "openvino":
            return open_runner(ir_artifact(loaded, precision, progress), backend=backend, threads=settings.threads)
        return open_runner(engine_artifact(loaded, precision, settings, progress), backend=backend,
                           cuda_graph=settings.cuda_graph)

    return open_pair
