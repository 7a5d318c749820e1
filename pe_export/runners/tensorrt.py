"""Running a TensorRT engine: torch CUDA tensors bound by address, execute_async_v3 on a stream,
optionally replayed from a captured CUDA graph."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np

from pe_export import artifacts
from pe_export.errors import TensorRTUnavailable, UsageError
from pe_export.runners.base import Runner
from pe_export.runners.tensorrt_env import Gpu, current_gpu, import_tensorrt


def check_compatible(metadata: dict, trt_version: str, gpu: Gpu) -> None:
    """Refuse an engine built for another TensorRT or GPU, unless it was built to be portable."""
    settings = metadata.get("settings", {})
    built_trt = metadata.get("tensorrt")
    if built_trt != trt_version and not settings.get("version_compatible"):
        raise TensorRTUnavailable(
            f"engine was built with TensorRT {built_trt}, this is {trt_version}; rebuild it with `pe-export trt`, "
            "or build with --version-compatible"
        )
    built_gpu = metadata.get("gpu", {})
    if built_gpu.get("compute_capability") != gpu.sm and settings.get("hardware_compat", "none") == "none":
        raise TensorRTUnavailable(
            f"engine was built for {built_gpu.get('name')} (sm {built_gpu.get('compute_capability')}), this GPU is "
            f"{gpu.name} (sm {gpu.sm}); rebuild it here, or build with --hardware-compat ampere+"
        )


class TrtRunner(Runner):
    backend = "tensorrt"
    gpu = True

    def __init__(self, path: Path, precision: str = "fp16", cuda_graph: bool = False, trt: ModuleType | None = None):
        import torch

        metadata = artifacts.load_manifest(path)
        if metadata is None:
            raise UsageError(f"{path} has no metadata JSON beside it; build engines with `pe-export trt`")
        trt = trt or import_tensorrt()
        check_compatible(metadata, str(trt.__version__), current_gpu())
        self.trt_version = str(trt.__version__)
        self.precision = metadata.get("precision", precision)
        logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(logger)
        if metadata.get("settings", {}).get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # the plan carries its own lean runtime
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise TensorRTUnavailable(f"TensorRT {trt.__version__} could not load {path}; rebuild it with `pe-export trt`")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        self.stream = torch.cuda.Stream()
        self.cuda_graph = cuda_graph
        self._graph = None
        self._static: tuple | None = None

    def _bind(self, x):
        import torch

        self.context.set_input_shape(self.input_name, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), dtype=torch.float32, device=x.device)
        self.context.set_tensor_address(self.input_name, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        return out

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        x = torch.from_numpy(batch).to("cuda", non_blocking=True)
        if not self.cuda_graph:
            out = self._bind(x)
            torch.cuda.current_stream().synchronize()
            self.context.execute_async_v3(self.stream.cuda_stream)
            self.stream.synchronize()
            return out.cpu().numpy()
        if self._static is None or self._static[0].shape != x.shape:
            self._capture(x)
        static_in, static_out = self._static
        static_in.copy_(x)
        self._graph.replay()
        torch.cuda.synchronize()
        return static_out.cpu().numpy()

    def _capture(self, x) -> None:
        import torch

        static_in = x.clone()
        static_out = self._bind(static_in)
        with torch.cuda.stream(self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)  # one run before capture, as TensorRT asks
        self.stream.synchronize()
        self._graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self._graph, stream=self.stream):
            self.context.execute_async_v3(self.stream.cuda_stream)
        self._static = (static_in, static_out)

    def versions(self) -> dict[str, str | None]:
        return {"tensorrt": self.trt_version}

    def close(self) -> None:
        self._graph = self._static = None
        self.context = self.engine = None

