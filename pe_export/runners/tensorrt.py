"""Running a TensorRT engine: device buffers bound by address, execute_async_v3 on a stream,
optionally replayed from a captured CUDA graph; and NVIDIA's rules for where an engine may run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pe_export.manifests import EngineManifest, read_manifest
from pe_export.errors import TensorRTUnavailable, ToolFailed, UsageError
from pe_export.runners.base import Runner
from pe_export.runners.device_memory import Buffer, CudaMemory, DeviceMemory
from pe_export.runners.tensorrt_env import Gpu, current_gpu, dims, import_tensorrt, release

if TYPE_CHECKING:
    import tensorrt as trt

# Across major versions a version-compatible engine loads only on the pairs NVIDIA documents; of
# those, 10 -> 11 is the one within the releases pe-export supports (8 -> 10 predates them).
CROSS_MAJOR = {(10, 11)}
# The engine I/O types the runner can feed and read, by TensorRT DataType name.
IO_DTYPES: dict[str, type[np.generic]] = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
    "UINT8": np.uint8, "BOOL": np.bool_,
}


def incompatibility(metadata: EngineManifest, trt_version: str, gpu: Gpu) -> str | None:
    """Why an engine cannot run under this TensorRT and GPU, or None when it can.

    A plain engine runs only on the TensorRT release and the compute capability that built it. A
    version-compatible engine also runs on a newer release of its major version (or across the
    documented major pairs), never on an older one; an ampere+ engine runs on any sm 8.0 or newer.
    """
    settings = metadata.settings
    built = metadata.tensorrt
    if built != trt_version:
        if not settings.get("version_compatible"):
            return (f"engine was built with TensorRT {built}, this is {trt_version}; rebuild it with `pe-export trt`, "
                    "or build with --version-compatible")
        old, new = release(built), release(trt_version)
        if new < old or (old[0] != new[0] and (old[0], new[0]) not in CROSS_MAJOR):
            return (f"engine was built with TensorRT {built}, this is {trt_version}; a version-compatible engine runs "
                    "only on the same or a newer release of its major version (or from 10.x on 11.x); rebuild it here")
    built_gpu = metadata.gpu
    where = f"{built_gpu.get('name')} (sm {built_gpu.get('compute_capability')})"
    compat = settings.get("hardware_compat", "none")
    if compat == "none" and built_gpu.get("compute_capability") != gpu.sm:
        return (f"engine was built for {where}, this GPU is {gpu.name} (sm {gpu.sm}); rebuild it here, "
                "or build with --hardware-compat ampere+")
    if compat == "ampere+" and gpu.compute_capability < (8, 0):
        return f"engine was built for Ampere or newer GPUs, this GPU is {gpu.name} (sm {gpu.sm}); rebuild it here"
    return None


def check_compatible(metadata: EngineManifest, trt_version: str, gpu: Gpu) -> None:
    """Refuse an engine that this TensorRT and GPU cannot run."""
    problem = incompatibility(metadata, trt_version, gpu)
    if problem:
        raise TensorRTUnavailable(problem)


class TrtRunner(Runner):
    backend = "tensorrt"
    gpu = True

    def __init__(self, path: Path, precision: str = "fp16", cuda_graph: bool = False, gpu: Gpu | None = None,
                 memory: DeviceMemory | None = None):
        metadata = read_manifest(path)
        if not isinstance(metadata, EngineManifest):
            raise UsageError(f"{path} has no engine manifest beside it; build engines with `pe-export trt`")
        trt = import_tensorrt()
        self.trt_version = str(trt.__version__)
        check_compatible(metadata, self.trt_version, gpu or current_gpu())
        self.precision = metadata.precision
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if metadata.settings.get("version_compatible"):
            self.runtime.engine_host_code_allowed = True  # the plan carries its own lean runtime
        engine: trt.ICudaEngine | None = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise TensorRTUnavailable(f"TensorRT {self.trt_version} could not load {path}; rebuild it with `pe-export trt`")
        context: trt.IExecutionContext | None = engine.create_execution_context()
        if context is None:
            raise TensorRTUnavailable(f"TensorRT could not create an execution context for {path} (out of GPU memory?)")
        self.engine, self.context = engine, context
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_name = next(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT)
        low, _, high = engine.get_tensor_profile_shape(self.input_name, 0)
        self.batch_range = (low[0], high[0])
        self.input_dtype, self.output_dtype = (self._dtype(engine, n) for n in (self.input_name, self.output_name))
        self.memory = memory or CudaMemory()
        self.cuda_graph = cuda_graph
        self._graph: tuple[tuple[int, ...], Buffer, Buffer, Callable[[], None]] | None = None

    @staticmethod
    def _dtype(engine: trt.ICudaEngine, name: str) -> np.dtype:
        kind = engine.get_tensor_dtype(name).name
        if kind not in IO_DTYPES:
            raise UsageError(f"engine tensor {name} is {kind}; pe-export runs engines with {', '.join(IO_DTYPES)} I/O")
        return np.dtype(IO_DTYPES[kind])

    def run(self, batch: np.ndarray) -> np.ndarray:
        low, high = self.batch_range
        if not low <= len(batch) <= high:
            raise UsageError(f"batch {len(batch)} is outside this engine's optimization profile (batches {low}-{high}); "
                             f"rebuild it with --batch MIN:OPT:MAX covering {len(batch)}")
        data = np.ascontiguousarray(batch, dtype=self.input_dtype)
        if not self.cuda_graph:
            x = self.memory.upload(data)  # held until the output is read: TensorRT has only its address
            out = self._bind(x, data.shape)
            self._execute()
            return self.memory.download(out).astype(np.float32, copy=False)
        if self._graph is None or self._graph[0] != data.shape:
            static_in = self.memory.upload(data)
            static_out = self._bind(static_in, data.shape)
            self._graph = (data.shape, static_in, static_out, self.memory.capture(self._execute))
        _, static_in, static_out, replay = self._graph
        self.memory.upload(data, into=static_in)
        replay()
        return self.memory.download(static_out).astype(np.float32, copy=False)

    def _bind(self, x: Buffer, shape: tuple[int, ...]) -> Buffer:
        """Set the input shape, make the output buffer, and bind both by address; every refusal is an error."""
        if not self.context.set_input_shape(self.input_name, shape):
            expected = dims(self.engine.get_tensor_shape(self.input_name))
            raise UsageError(f"TensorRT refused input shape {shape} for {self.input_name}; the engine takes {expected}")
        out_shape = dims(self.context.get_tensor_shape(self.output_name))
        out = self.memory.empty(out_shape, self.output_dtype)
        for name, buffer in ((self.input_name, x), (self.output_name, out)):
            if not self.context.set_tensor_address(name, buffer.data_ptr()):
                raise ToolFailed(f"TensorRT refused the device address of {name} (see its log above)")
        return out

    def _execute(self) -> None:
        if not self.context.execute_async_v3(self.memory.stream):
            raise ToolFailed("TensorRT could not run the engine: execute_async_v3 failed (see its log above)")

    def versions(self) -> dict[str, str | None]:
        return {"tensorrt": self.trt_version}

    def close(self) -> None:
        self._graph = None
        if hasattr(self, "context"):
            del self.context, self.engine  # the context goes before its engine
