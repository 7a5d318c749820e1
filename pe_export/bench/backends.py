"""The runner of a (backend, precision) pair: the torch model itself, or its artifact, made on demand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pe_export.model import LoadedModel
from pe_export.model.head import OutputHead
from pe_export.openvino.ir import ensure_ir
from pe_export.precision.profiles import cpu_profile, default_profile
from pe_export.precision.quantize import precision_onnx
from pe_export.runners import BACKENDS, Runner, open_runner

RunnerOpener = Callable[[str, str], Runner]


def onnx_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The ONNX file of a precision under artifacts/, exported (or reused) for onnxruntime."""
    return precision_onnx(loaded, precision, cpu_profile(loaded.variant.name), progress=progress)


def ir_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The OpenVINO IR of a precision under artifacts/, converted (or reused) from the same ONNX files."""
    return ensure_ir(loaded, precision, cpu_profile(loaded.variant.name), progress).path


def engine_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The TensorRT engine of a precision (default profile, batches up to 32), built or reused."""
    from pe_export.runners.tensorrt_env import current_gpu, import_tensorrt
    from pe_export.trt.engine import build_settings, ensure_engine

    trt, gpu = import_tensorrt(), current_gpu()
    profile = default_profile(loaded.variant.name)
    settings = build_settings(profile, precision, batch_max=32, batch_opt=8)
    onnx_path = precision_onnx(loaded, precision, profile, progress=progress)
    return ensure_engine(onnx_path, settings, None, trt, gpu, progress).path


def runner_opener(loaded: LoadedModel, threads: int | None, device: str, cuda_graph: bool = False,
                  progress: Callable[[str], None] = lambda step: None) -> RunnerOpener:
    def open_pair(backend: str, precision: str) -> Runner:
        runtime = BACKENDS[backend].runtime
        if runtime == "torch":
            head = OutputHead(loaded.model, loaded.variant.default_output)
            return open_runner(head, backend=backend, precision=precision, device=device)
        if runtime == "onnxruntime":
            return open_runner(onnx_artifact(loaded, precision, progress), backend=backend, threads=threads)
        if runtime == "openvino":
            return open_runner(ir_artifact(loaded, precision, progress), backend=backend, threads=threads)
        return open_runner(engine_artifact(loaded, precision, progress), backend=backend, cuda_graph=cuda_graph)

    return open_pair
