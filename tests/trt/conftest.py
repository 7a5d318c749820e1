"""A test double of the `tensorrt` Python module, faithful to the documented 10.x and 11.x APIs, and a
host-memory double of the device memory TensorRT runs on.

Only what pe-export touches is modelled, with the behaviour real TensorRT shows:
- 11.x has no BuilderFlag.FP16/BF16/INT8/FP8 and no IBuilderConfig.int8_calibrator (touching them
  raises AttributeError); networks are always strongly typed and there is no EXPLICIT_BATCH; a 10.x
  network is strongly typed only when created with STRONGLY_TYPED, which the plan records;
- BuilderFlag.TF32 is set in a new builder config (TensorRT enables TF32 by default);
- the ONNX parser loads the file with its external data (a missing `.data` fails the parse), types
  the network I/O as the ONNX declares them, and rejects Attention before 10.14 and RotaryEmbedding
  before 10.15 with IParserError-like errors;
- a timing cache carries the TensorRT release and GPU it was made on: set_timing_cache returns False
  for one from elsewhere, create_timing_cache returns None for damaged bytes, and get_timing_cache
  returns None while no cache is attached;
- Builder.num_DLA_cores is 0 on a discrete GPU and on every release without DLA (10.8 to 11.4.0),
  and a DLA build without a DLA fails;
- Runtime.deserialize_cuda_engine returns None for bytes that are no plan, for a plan of another
  release unless it was built version-compatible, the runtime is newer and engine host code is
  allowed, and for a plan of another GPU unless it was built hardware-compatible;
- IExecutionContext returns False from set_input_shape for a shape outside the profile, from
  set_tensor_address for an unknown tensor or a null address, and from execute_async_v3 while a
  shape or an address is missing; it reads its input from and writes its output to the bound
  addresses, computing out[b, t, c] = mean(x[b]) + t + c / 1000.
Everything the double was asked is recorded in `calls`.
"""

from __future__ import annotations

import ctypes
import enum
import importlib.machinery
import json
import types
from pathlib import Path

import numpy as np
import onnx
import pytest

from pe_export.runners.tensorrt_env import Gpu, release

SPATIAL = "PE-Spatial-T16-512"
ONNX_TYPES = {onnx.TensorProto.FLOAT: "FLOAT", onnx.TensorProto.FLOAT16: "HALF", onnx.TensorProto.BFLOAT16: "BF16",
              onnx.TensorProto.INT8: "INT8", onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64",
              onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.UINT8: "UINT8"}
NUMPY_TYPES = {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
               "BOOL": np.bool_, "UINT8": np.uint8}


def fake_output(batch: np.ndarray, tokens: int, width: int) -> np.ndarray:
    """What the double's engines compute for a batch."""
    means = batch.reshape(len(batch), -1).astype(np.float64).mean(axis=1)
    return (means[:, None, None] + np.arange(tokens)[None, :, None] + np.arange(width)[None, None, :] / 1000).astype(np.float32)


def fake_tensorrt(version: str = "11.0.0", dla_cores: int = 0, sm: str = "9.0") -> types.ModuleType:
    """The double of TensorRT `version` on a GPU of compute capability `sm` with `dla_cores` DLA cores."""
    major = release(version)[0]
    trt = types.ModuleType("tensorrt")
    trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)  # imported modules have one; torch looks
    trt.__version__ = version
    trt.calls = []

    flags = ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"]
    if major < 11:
        flags = ["EXPLICIT_BATCH", *flags]
    trt.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", {n: i for i, n in enumerate(flags)})
    builder_flags = ["TF32", "DEBUG", "GPU_FALLBACK", "REFIT", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
                     "SPARSE_WEIGHTS", "STRIP_PLAN", "WEIGHT_STREAMING"]
    if major < 11:
        builder_flags += ["FP16", "BF16", "INT8", "FP8", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS"]
    trt.BuilderFlag = enum.IntEnum("BuilderFlag", {n: i for i, n in enumerate(builder_flags)})
    trt.MemoryPoolType = enum.IntEnum("MemoryPoolType", {"WORKSPACE": 0, "DLA_MANAGED_SRAM": 1})
    trt.HardwareCompatibilityLevel = enum.IntEnum("HardwareCompatibilityLevel", {"NONE": 0, "AMPERE_PLUS": 1, "SAME_COMPUTE_CAPABILITY": 2})
    trt.DeviceType = enum.IntEnum("DeviceType", {"GPU": 0, "DLA": 1})
    trt.TensorIOMode = enum.IntEnum("TensorIOMode", {"NONE": 0, "INPUT": 1, "OUTPUT": 2})
    trt.DataType = enum.IntEnum("DataType", {n: i for i, n in enumerate(
        ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8", "BF16", "INT64", "INT4"])})
    has_dla = release(version) < (10, 8) or release(version) >= (11, 4, 1)

    class Dims:
        """Indexable and sized; iterating it is not in the typed API, so the double refuses it."""

        __iter__ = None

        def __init__(self, shape=()):
            self._dims = [int(d) for d in shape]

        def __getitem__(self, i):
            return self._dims[i]

        def __len__(self):
            return len(self._dims)

        def as_list(self):
            return list(self._dims)

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            self.severity = severity

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, Dims(shape), dtype

    class Network:
        def __init__(self, flags):
            self.flags = flags
            self.inputs, self.outputs = [], []

        num_inputs = property(lambda self: len(self.inputs))
        num_outputs = property(lambda self: len(self.outputs))

        def get_input(self, i):
            return self.inputs[i]

        def get_output(self, i):
            return self.outputs[i]

    class ParserError:
        def __init__(self, node, name, op, desc):
            self._node, self._name, self._op, self._desc = node, name, op, desc

        def node(self):
            return self._node

        def node_name(self):
            return self._name

        def node_operator(self):
            return self._op

        def desc(self):
            return self._desc

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            trt.calls.append(("parse_from_file", path))
            try:
                model = onnx.load(path)  # with its external data, as the parser reads the weights
            except Exception as exc:  # noqa: BLE001 - onnx raises several types for a missing or short file
                self.errors.append(ParserError(-1, "", "", f"failed to load the weights: {exc}"))
                return False
            for i, node in enumerate(model.graph.node):
                needs = {"Attention": (10, 14), "RotaryEmbedding": (10, 15)}.get(node.op_type)
                if needs and release(version)[:2] < needs:
                    self.errors.append(ParserError(i, node.name, node.op_type, f"No importer registered for op: {node.op_type}"))
            for values, target in ((model.graph.input, self.network.inputs), (model.graph.output, self.network.outputs)):
                for v in values:
                    dims = [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim]
                    target.append(Tensor(v.name, dims, trt.DataType[ONNX_TYPES[v.type.tensor_type.elem_type]]))
            return not self.errors

    class TimingCache:
        def __init__(self, made_with, made_on, entries=0):
            self.made_with, self.made_on, self.entries = made_with, made_on, entries

        def serialize(self):
            return json.dumps({"tensorrt": self.made_with, "gpu": self.made_on, "entries": self.entries}).encode()

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            if not all(isinstance(d, Dims) for d in (low, opt, high)):
                raise TypeError("set_shape(): incompatible function arguments")
            low, opt, high = (d.as_list() for d in (low, opt, high))
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise RuntimeError(f"Shape provided for min is inconsistent with other shapes for {name}")
            self.shapes[name] = (low, opt, high)

    class BuilderConfig:
        def __init__(self):
            self.pools, self.flags, self.profiles = {}, {trt.BuilderFlag.TF32}, []
            self.builder_optimization_level = 3
            self.hardware_compatibility_level = trt.HardwareCompatibilityLevel.NONE
            self.default_device_type = trt.DeviceType.GPU
            self.DLA_core = -1
            self.timing_cache = None
            if major < 11:
                self.int8_calibrator = None

        def set_memory_pool_limit(self, pool, size):
            self.pools[pool] = size

        def set_flag(self, flag):
            self.flags.add(flag)

        def clear_flag(self, flag):
            self.flags.discard(flag)

        def get_flag(self, flag):
            return flag in self.flags

        def create_timing_cache(self, data):
            if not bytes(data):
                return TimingCache(version, sm)
            try:
                stored = json.loads(bytes(data))
                return TimingCache(stored["tensorrt"], stored["gpu"], stored["entries"])
            except (ValueError, KeyError, TypeError):
                return None  # damaged bytes

        def set_timing_cache(self, cache, ignore_mismatch):
            if cache is None:
                raise TypeError("set_timing_cache(): incompatible function arguments")
            if (cache.made_with, cache.made_on) != (version, sm) and not ignore_mismatch:
                return False
            self.timing_cache = cache
            return True

        def get_timing_cache(self):
            return self.timing_cache

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            trt.calls.append(("Builder",))

        @property
        def num_DLA_cores(self):
            return dla_cores if has_dla else 0

        def create_network(self, flags=0):
            strongly = flags & (1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
            trt.calls.append(("create_network", flags))
            network = Network(flags)
            network.strongly_typed = bool(strongly) or major >= 11
            return network

        def create_builder_config(self):
            config = BuilderConfig()
            trt.last_config = config
            return config

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            trt.calls.append(("build_serialized_network",))
            dla = config.default_device_type == trt.DeviceType.DLA
            if not config.profiles or (dla and config.DLA_core >= self.num_DLA_cores):
                return None
            if config.timing_cache:
                config.timing_cache.entries += 1  # the tactics this build timed
            io = {"inputs": network.inputs, "outputs": network.outputs}
            plan = {"version": version, "sm": sm, "strongly_typed": network.strongly_typed,
                    "flags": sorted(f.name for f in config.flags),
                    "profile": {k: v for p in config.profiles for k, v in p.shapes.items()},
                    "workspace": config.pools.get(trt.MemoryPoolType.WORKSPACE),
                    "opt_level": config.builder_optimization_level,
                    "hardware_compat": config.hardware_compatibility_level.name,
                    "device": config.default_device_type.name, "dla_core": config.DLA_core,
                    **{k: [{"name": t.name, "shape": t.shape.as_list(), "dtype": t.dtype.name} for t in v] for k, v in io.items()}}
            return json.dumps(plan).encode()

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            trt.calls.append(("deserialize_cuda_engine",))
            try:
                plan = json.loads(bytes(data))
            except ValueError:
                return None
            if plan["version"] != version:
                portable = "VERSION_COMPATIBLE" in plan["flags"] and self.engine_host_code_allowed
                if not portable or release(version) < release(plan["version"]):
                    return None
            if plan["sm"] != sm and plan["hardware_compat"] == "NONE":
                return None
            return Engine(plan)

    class Engine:
        def __init__(self, plan):
            self.plan = plan
            self.tensors = {t["name"]: (trt.TensorIOMode.INPUT, t) for t in plan["inputs"]}
            self.tensors.update({t["name"]: (trt.TensorIOMode.OUTPUT, t) for t in plan["outputs"]})

        num_io_tensors = property(lambda self: len(self.tensors))

        def get_tensor_name(self, i):
            return list(self.tensors)[i]

        def get_tensor_mode(self, name):
            return self.tensors[name][0] if name in self.tensors else trt.TensorIOMode.NONE

        def get_tensor_dtype(self, name):
            return trt.DataType[self.tensors[name][1]["dtype"]]

        def get_tensor_shape(self, name):
            return Dims(self.tensors[name][1]["shape"])

        def get_tensor_profile_shape(self, name, profile_index):
            if profile_index != 0 or self.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                raise RuntimeError("get_tensor_profile_shape: not an input of profile 0")
            return [Dims(shape) for shape in self.plan["profile"][name]]

        def create_execution_context(self):
            return Context(self)

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses, self.executions = engine, {}, {}, 0

        def set_input_shape(self, name, shape):
            if self.engine.get_tensor_mode(name) != trt.TensorIOMode.INPUT:
                return False
            low, _, high = self.engine.plan["profile"][name]
            if len(shape) != len(low) or not all(a <= d <= b for a, d, b in zip(low, shape, high)):
                return False
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            if name in self.shapes:
                return Dims(self.shapes[name])
            shape = self.engine.get_tensor_shape(name).as_list()
            batch = next(iter(self.shapes.values()), (-1,))[0]
            return Dims([batch if d == -1 else d for d in shape])

        def set_tensor_address(self, name, memory):
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.NONE or not memory:
                return False
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle):
            inputs = [n for n in self.engine.tensors if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            if any(n not in self.shapes for n in inputs) or set(self.addresses) != set(self.engine.tensors):
                return False
            (name,), (output,) = inputs, [n for n in self.engine.tensors if n not in inputs]
            x = self._view(name, self.shapes[name])
            out = self._view(output, self.get_tensor_shape(output).as_list())
            out[...] = fake_output(x, *out.shape[1:])
            self.executions += 1
            return True

        def _view(self, name, shape):
            dtype = np.dtype(NUMPY_TYPES[self.engine.get_tensor_dtype(name).name])
            size = int(np.prod(shape)) * dtype.itemsize
            raw = (ctypes.c_byte * size).from_address(self.addresses[name])
            return np.frombuffer(raw, dtype=dtype).reshape(shape)

    trt.Dims = Dims
    trt.Logger = Logger
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    trt.Runtime = Runtime
    return trt


class HostBuffer:
    def __init__(self, array: np.ndarray):
        self.array = array

    def data_ptr(self) -> int:
        return self.array.ctypes.data


class HostMemory:
    """Device memory in host arrays: what the runner asks of CUDA, on the CPU."""

    stream = 7  # a stream handle; the double's execute takes any

    def __init__(self):
        self.captures = 0

    def upload(self, array, into=None):
        if into is None:
            return HostBuffer(np.array(array, copy=True))
        np.copyto(into.array, array)
        return into

    def empty(self, shape, dtype):
        return HostBuffer(np.full(shape, np.nan, dtype) if np.dtype(dtype).kind == "f" else np.zeros(shape, dtype))

    def download(self, buffer):
        return buffer.array.copy()

    def capture(self, launch):
        launch()
        self.captures += 1
        return launch


def plan_contents(path: Path) -> dict:
    """What the double's 'engine' recorded of the build."""
    return json.loads(Path(path).read_bytes())


@pytest.fixture(scope="session")
def onnx_files(t16_exports) -> dict:
    """PE-Spatial-T16-512 exported fused (trt11), decomposed (trt10) and with a static batch of 2 (each an
    `ExportResult`: the file and its manifest, what an engine is built from)."""
    return {
        "fused": t16_exports(SPATIAL, target="trt11", simplify=True),
        "decomposed": t16_exports(SPATIAL, target="trt10"),
        "static": t16_exports(SPATIAL, target="trt10", batch=2),
    }


@pytest.fixture
def make_fake_tensorrt():
    """The factory of `tensorrt` doubles, by version: make_fake_tensorrt("10.8.0")."""
    return fake_tensorrt


@pytest.fixture
def use_tensorrt(monkeypatch):
    """Install a double as the `tensorrt` module: trt = use_tensorrt("10.8.0", dla_cores=2)."""
    def install(version: str = "11.0.0", **options) -> types.ModuleType:
        trt = fake_tensorrt(version, **options)
        monkeypatch.setitem(__import__("sys").modules, "tensorrt", trt)
        return trt

    return install


@pytest.fixture
def gpu_machine(monkeypatch):
    """The TensorRT code finds an H200 and its runners get host memory: the GPU paths run on the CPU.
    (torch itself keeps seeing no GPU, so that exports stay on the CPU.)"""
    for module in ("pe_export.runners.tensorrt", "pe_export.trt.build", "pe_export.trt.engine"):
        monkeypatch.setattr(f"{module}.current_gpu", lambda: Gpu("NVIDIA H200", (9, 0)))
    monkeypatch.setattr("pe_export.runners.tensorrt.CudaMemory", HostMemory)


@pytest.fixture
def host_memory() -> HostMemory:
    return HostMemory()


@pytest.fixture
def engine_output():
    """What the double's engines compute: engine_output(batch, tokens, width)."""
    return fake_output


@pytest.fixture
def read_plan():
    """What a double's engine file recorded of its build."""
    return plan_contents
