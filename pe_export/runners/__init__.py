"""One small interface over the runtimes that execute PE: torch, onnxruntime, OpenVINO, TensorRT and
ExecuTorch.

A runner is opened on one model or artifact by `open_runner`, runs batches (numpy in, numpy out),
reports its device and library versions, and is closed (also as a context manager). Parity and
latency are written once against this interface.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Optional

from pe_export.manifests import read_manifest
from pe_export.errors import UsageError
from pe_export.precisions import PRECISIONS
from pe_export.runners.base import Runner

if TYPE_CHECKING:
    import torch

ENGINE_SUFFIXES = (".engine", ".plan")
ARTIFACT_SUFFIXES = (".onnx", ".xml", *ENGINE_SUFFIXES, ".pte")
Runtime = Literal["torch", "onnxruntime", "openvino", "tensorrt", "executorch"]
# The artifact files each runtime runs.
OPENS: dict[Runtime, tuple[str, ...]] = {
    "torch": (), "onnxruntime": (".onnx",), "openvino": (".onnx", ".xml"), "tensorrt": ENGINE_SUFFIXES,
    "executorch": (".pte",),
}


@dataclass(frozen=True)
class Backend:
    name: str
    runtime: Runtime
    provider: Optional[str]  # the onnxruntime provider, "compile" for torch.compile, or ExecuTorch's delegate
    gpu: bool  # runs on a GPU only

    def runs(self, precision: str) -> bool:
        """Whether this backend can compute the precision at all; other pairs are skipped and reported."""
        spec = PRECISIONS[precision]
        if self.runtime == "torch":
            return spec.torch_dtype is not None
        if self.runtime == "openvino":
            from pe_export.runners import openvino

            return openvino.runs(precision)
        if self.runtime == "executorch":
            from pe_export.runners.executorch import PRECISIONS as EXECUTORCH_PRECISIONS

            return precision in EXECUTORCH_PRECISIONS
        return self.gpu or spec.runs_on_ort_cpu

    def opens(self, path: Path) -> bool:
        """Whether this backend runs artifact files of this type."""
        return path.suffix in OPENS[self.runtime]

    def require(self) -> None:
        """Refuse, before any work, a backend whose optional extra is not installed."""
        if self.runtime == "openvino":
            from pe_export.runners.openvino import require_openvino

            require_openvino()
        if self.runtime == "executorch":
            from pe_export.runners.executorch import require_executorch

            require_executorch()


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "torch", None, False),
        Backend("torch-compile", "torch", "compile", False),
        Backend("onnxruntime", "onnxruntime", "cpu", False),
        Backend("onnxruntime-cuda", "onnxruntime", "cuda", True),
        Backend("onnxruntime-trt", "onnxruntime", "tensorrt", True),
        Backend("openvino", "openvino", "cpu", False),
        Backend("tensorrt", "tensorrt", None, True),
        Backend("executorch", "executorch", "xnnpack", False),
    )
}


def get_backends(names: list[str]) -> list[Backend]:
    unknown = [name for name in names if name not in BACKENDS]
    if unknown:
        raise UsageError(f"unknown backend(s) {', '.join(unknown)}; choose from {', '.join(BACKENDS)}")
    return [BACKENDS[name] for name in names]


def default_backend(path: Path) -> Backend:
    """The backend an artifact runs on unless one is named, by file type: the first in BACKENDS that opens it
    (.onnx: onnxruntime CPU, .xml: OpenVINO, .engine/.plan: TensorRT, .pte: ExecuTorch)."""
    found = next((b for b in BACKENDS.values() if b.opens(path)), None)
    if found is None:
        raise UsageError(f"unknown artifact type {path.suffix!r} ({path}); expected {', '.join(ARTIFACT_SUFFIXES)}")
    return found


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

    An artifact runs on `backend`, by default the one for its file type (see `default_backend`);
    onnxruntime uses the backend's provider, TensorRT replays a captured CUDA graph with
    `cuda_graph`. The artifact's precision comes from its manifest.
    """
    if not isinstance(source, (str, Path)):
        from pe_export.runners.torch import TorchRunner

        chosen = BACKENDS[backend or "torch"]
        return TorchRunner(source, precision or "fp32", compile=chosen.provider == "compile", device=device)
    path = Path(source)
    chosen = BACKENDS[backend] if backend else default_backend(path)
    if not path.is_file():
        raise UsageError(f"artifact not found: {path}")
    if not chosen.opens(path):
        raise UsageError(f"{chosen.name} cannot run {path.suffix} files ({path.name})")
    manifest = read_manifest(path)
    precision = precision or (manifest.precision if manifest else "fp32")
    if chosen.runtime == "onnxruntime":
        from pe_export.runners.onnxruntime import OrtRunner

        return OrtRunner(path, chosen.provider or "cpu", threads, precision)
    if chosen.runtime == "openvino":
        from pe_export.runners.openvino import OvRunner

        return OvRunner(path, precision, threads)
    if chosen.runtime == "executorch":
        from pe_export.runners.executorch import ExecutorchRunner

        return ExecutorchRunner(path, precision, threads)
    from pe_export.runners.tensorrt import TrtRunner

    return TrtRunner(path, precision, cuda_graph=cuda_graph)


__all__ = ["ARTIFACT_SUFFIXES", "BACKENDS", "Backend", "Runner", "default_backend", "get_backends", "open_runner"]
