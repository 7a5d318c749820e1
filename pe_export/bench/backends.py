"""Opening a runner for a (backend, precision) pair: the model itself or its artifact, made on demand."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pe_export.model import LoadedModel
from pe_export.model.head import OutputHead

ORT_PROVIDERS = {"onnxruntime": "cpu", "onnxruntime-cuda": "cuda", "onnxruntime-trt": "tensorrt"}


def onnx_artifact(loaded: LoadedModel, precision: str, progress: Callable[[str], None]) -> Path:
    """The ONNX file of a precision under artifacts/, exported (or reused) for onnxruntime."""
    from pe_export.precision.profiles import Profile
    from pe_export.precision.quantize import precision_onnx

    profile = Profile(name="bench", variant=loaded.variant.name, export={"target": "ort"})
    return precision_onnx(loaded, precision, profile, progress=progress)


def runner_opener(
    loaded: LoadedModel, threads: int | None, device: str, progress: Callable[[str], None] = lambda step: None
) -> Callable[[str, str], object]:
    def open_runner(backend: str, precision: str):
        if backend in ("torch", "torch-compile"):
            from pe_export.runners.torch import TorchRunner

            head = OutputHead(loaded.model, loaded.variant.default_output)
            return TorchRunner(head, precision, compile=backend == "torch-compile", device=device)
        if backend in ORT_PROVIDERS:
            from pe_export.runners.onnxruntime import OrtRunner

            return OrtRunner(onnx_artifact(loaded, precision, progress), ORT_PROVIDERS[backend], threads, precision)
        from pe_export.trt.engine import engine_runner

        return engine_runner(loaded, precision, progress)

    return open_runner
