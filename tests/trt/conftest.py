"""A test double of the `tensorrt` Python module, faithful to the documented 10.x and 11.x APIs.

Only what pe-export touches is modelled, with the differences that matter:
- 11.x has no BuilderFlag.FP16/BF16/INT8/FP8 and no IBuilderConfig.int8_calibrator (touching them
  raises AttributeError, as the real module does); networks are always strongly typed and
  NetworkDefinitionCreationFlag has no EXPLICIT_BATCH;
- 10.x keeps those flags, and this double refuses to build a network created without
  STRONGLY_TYPED, since precision must come from the ONNX graph;
- the ONNX parser rejects Attention before 10.14 and RotaryEmbedding before 10.15, with
  IParserError-like errors; it reads the real ONNX file (external data stays on disk).
Everything it was asked is recorded in `calls` for the tests to check.
"""

from __future__ import annotations

import enum
import json
import types
from pathlib import Path

import onnx
import pytest


def fake_tensorrt(version: str = "11.0.0") -> types.ModuleType:
    major, minor = (int(p) for p in version.split(".")[:2])
    trt = types.ModuleType("tensorrt")
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

    class Logger:
        WARNING = 2

        def __init__(self, severity=2):
            self.severity = severity

    class Tensor:
        def __init__(self, name, shape, dtype):
            self.name, self.shape, self.dtype = name, tuple(shape), dtype

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

        def code(self):
            return 8  # UNSUPPORTED_NODE

    class OnnxParser:
        def __init__(self, network, logger):
            self.network = network
            self.errors = []

        num_errors = property(lambda self: len(self.errors))

        def get_error(self, i):
            return self.errors[i]

        def parse_from_file(self, path):
            trt.calls.append(("parse_from_file", path))
            model = onnx.load(path, load_external_data=False)
            for i, node in enumerate(model.graph.node):
                needs = {"Attention": (10, 14), "RotaryEmbedding": (10, 15)}.get(node.op_type)
                if needs and (major, minor) < needs:
                    self.errors.append(ParserError(i, node.name, node.op_type, f"No importer registered for op: {node.op_type}"))
            for value, target in ((model.graph.input, self.network.inputs), (model.graph.output, self.network.outputs)):
                for v in value:
                    dims = [d.dim_value if d.dim_value else -1 for d in v.type.tensor_type.shape.dim]
                    target.append(Tensor(v.name, dims, "DataType.FLOAT"))
            return not self.errors

    class TimingCache:
        def __init__(self, data):
            self.data = bytes(data)

        def serialize(self):
            return self.data + b"|tactics"

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, low, opt, high):
            if not all(a <= b <= c for a, b, c in zip(low, opt, high)):
                raise RuntimeError(f"Shape provided for min is inconsistent with other shapes for {name}")
            self.shapes[name] = (tuple(low), tuple(opt), tuple(high))

    class BuilderConfig:
        def __init__(self):
            self.pools, self.flags, self.profiles = {}, set(), []
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

        def create_timing_cache(self, data):
            return TimingCache(data)

        def set_timing_cache(self, cache, ignore_mismatch):
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
            if not network.strongly_typed:
                return None  # 10.x double: weakly typed networks are refused here
            if not config.profiles:
                return None
            plan = {"version": version, "flags": sorted(f.name for f in config.flags),
                    "profile": {k: v for p in config.profiles for k, v in p.shapes.items()},
                    "workspace": config.pools.get(trt.MemoryPoolType.WORKSPACE),
                    "opt_level": config.builder_optimization_level,
                    "hardware_compat": config.hardware_compatibility_level.name,
                    "device": config.default_device_type.name, "dla_core": config.DLA_core}
            return json.dumps(plan).encode()

    trt.Logger = Logger
    trt.Builder = Builder
    trt.OnnxParser = OnnxParser
    return trt


def plan_contents(path: Path) -> dict:
    """What the double's 'engine' recorded of the build."""
    return json.loads(Path(path).read_bytes())


@pytest.fixture
def make_fake_tensorrt():
    """The factory of `tensorrt` doubles, by version: make_fake_tensorrt("10.8.0")."""
    return fake_tensorrt


@pytest.fixture
def read_plan():
    """What a double's engine file recorded of its build."""
    return plan_contents
