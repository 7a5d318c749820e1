"""The runner of a (backend, precision) pair: the torch model itself, or its artifact, made on demand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pe_export.model import LoadedModel
from pe_export.model.head import OutputHead
from pe_export.precision.profiles import Profile, default_profile
from pe_export.precision.quantize import precision_onnx
from pe_export.runners import BACKENDS, Runner, open_runner

RunnerOpener = Callable[[str, str], Runner]


def onnx_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The ONNX file of a precision under artifacts/, exported (or reused) for onnxruntime."""
    profile = Profile(name="bench", variant=loaded.variant.name, export={"target": "ort"})
    return precision_onnx(loaded, precision, profile, progress=progress)


def engine_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The TensorRT engine of a precision (default profile, batches up to 32), built or reused."""
    from pe_export.trt.engine import build_settings, ensure_engine

    profile = default_profile(loaded.variant.name)
    settings = build_settings(profile, precision, batch_max=32, batch_opt=8)
    onnx_path = precision_onnx(loaded, precision, profile, progress=progress)
    return ensure_engine(onnx_path, settings, None, None, progress).path


def runner_opener(loaded: LoadedModel, threads: int | None, device: str, cuda_graph: bool = False,
                  progress: Callable[[str], None] = lambda step: None) -> RunnerOpener:
    def open_pair(backend: str, precision: str) -> Runner:
        runtime = BACKENDS[backend].runtime
        if runtime == "torch":
            head = OutputHead(loaded.model, loaded.variant.default_output)
            return open_runner(head, backend=backend, precision=precision, device=device)
        if runtime == "onnxruntime":
            return open_runner(onnx_artifact(loaded, precision, progress), backend=backend, threads=threads)
        return open_runner(engine_artifact(loaded, precision, progress), backend=backend, cuda_graph=cuda_graph)

    return open_pair
