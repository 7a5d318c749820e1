"""One small interface over the runtimes that execute PE: torch, onnxruntime and TensorRT.

A runner is opened on one model or artifact by `open_runner`, runs batches (numpy in, numpy out),
reports its device and library versions, and is closed (also as a context manager). Parity and
latency are written once against this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from pe_export import artifacts
from pe_export.errors import UsageError
from pe_export.precisions import PRECISIONS
from pe_export.runners.base import Runner

if TYPE_CHECKING:
    import torch

ENGINE_SUFFIXES = (".engine", ".plan")
ARTIFACT_SUFFIXES = (".onnx", *ENGINE_SUFFIXES)


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: Literal["torch", "onnxruntime", "tensorrt"]
    provider: Optional[str]  # the onnxruntime provider, or "compile" for torch.compile
    gpu: bool  # runs on a GPU only

    def runs(self, precision: str) -> bool:
        """Whether this backend can compute the precision at all; other pairs are skipped and reported."""
        spec = PRECISIONS[precision]
        if self.runtime == "torch":
            return spec.torch_dtype is not None
        return self.gpu or spec.runs_on_ort_cpu


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "torch", None, False),
        Backend("torch-compile", "torch", "compile", False),
        Backend("onnxruntime", "onnxruntime", "cpu", False),
        Backend("onnxruntime-cuda", "onnxruntime", "cuda", True),
        Backend("onnxruntime-trt", "onnxruntime", "tensorrt", True),
        Backend("tensorrt", "tensorrt", None, True),
    )
}


def open_runner(
    source: "Path | torch.nn.Module",
    *,
    backend: str | None = None,
    precision: str | None = None,
    threads: int | None = None,
    device: str = "cpu",
    cuda_graph: bool = False,
) -> Runner:
    """The runner for a torch module (backend torch or torch-compile) or an artifact file.

    An artifact's runtime follows its file type (.onnx: onnxruntime, with the provider of
    `backend`; .engine/.plan: TensorRT, replaying a captured CUDA graph with `cuda_graph`) and its
    precision comes from its manifest.
    """
    if not isinstance(source, (str, Path)):
        from pe_export.runners.torch import TorchRunner

        chosen = BACKENDS[backend or "torch"]
        return TorchRunner(source, precision or "fp32", compile=chosen.provider == "compile", device=device)
    path = Path(source)
    if path.suffix not in ARTIFACT_SUFFIXES:
        raise UsageError(f"unknown artifact type {path.suffix!r} ({path}); expected .onnx, .engine or .plan")
    if not path.is_file():
        raise UsageError(f"artifact not found: {path}")
    manifest = artifacts.read_manifest(path) or {}
    precision = precision or manifest.get("precision", "fp32")
    if path.suffix == ".onnx":
        from pe_export.runners.onnxruntime import OrtRunner

        provider = BACKENDS[backend or "onnxruntime"].provider or "cpu"
        return OrtRunner(path, provider, threads, precision)
    from pe_export.runners.tensorrt import TrtRunner

    return TrtRunner(path, precision, cuda_graph=cuda_graph)


__all__ = ["ARTIFACT_SUFFIXES", "BACKENDS", "Backend", "Runner", "open_runner"]
