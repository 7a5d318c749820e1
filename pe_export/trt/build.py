"""Building a strongly typed TensorRT engine from an ONNX file whose graph carries its precision.

TensorRT 11 removed BuilderFlag.FP16/INT8/FP8/BF16 and INT8 calibrators, and 10.x deprecated
them: the builder here never sets them. On 10.x the network is created with the STRONGLY_TYPED
flag; on 11.x strong typing is the only mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal, Union

from pydantic import Field, model_validator

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import TensorRTUnavailable, ToolFailed, UsageError
from pe_export.manifests import EngineManifest, Upstream, manifest_path, seal, write_manifest
from pe_export.onnx.spec import ExportResult
from pe_export.precision.profiles import TensorRTSection, check_batch_range
from pe_export.precisions import PrecisionName
from pe_export.report import PrecisionResult
from pe_export.runners.tensorrt_env import Gpu, current_gpu, dims, import_tensorrt, release
from pe_export.trt.timing_cache import attach_timing_cache, cache_file, save_timing_cache

if TYPE_CHECKING:
    import tensorrt as trt


class BuildSettings(TensorRTSection):
    """A profile's TensorRT section plus the precision and the optimization profile's batch range."""

    precision: PrecisionName = "fp16"
    # the engine's tensor names: the ONNX's (pixel_values -> ...), or those TensorRT-LLM binds (input -> encoder_output)
    tensor_names: Literal["onnx", "trtllm"] = "onnx"
    batch_min: int = Field(1, ge=1)
    batch_opt: int = Field(1, ge=1)
    batch_max: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> "BuildSettings":
        check_batch_range(self.batch_min, self.batch_opt, self.batch_max)
        return self

    def recorded(self) -> dict:
        data = self.model_dump(mode="json")
        data["timing_cache"] = str(self.timing_cache) if self.timing_cache else None
        return data


SourceOnnx = Union[ExportResult, PrecisionResult]  # the ONNX of a precision an engine is built from


@dataclass(frozen=True)
class EngineResult:
    path: Path
    manifest: EngineManifest
    notes: tuple[str, ...] = ()  # what went wrong beside the engine (its timing cache), for the user to read
    reused: bool = False  # found built from the same key, not built by this call


def engine_key(onnx: SourceOnnx, settings: BuildSettings) -> dict:
    """What an engine is built from: its ONNX's identity and the build settings. Whether this TensorRT
    and GPU may run it is NVIDIA's rule (runners.tensorrt.incompatibility), checked beside the key."""
    return {"onnx": onnx.manifest.identity, "settings": settings.recorded()}


def check_dla(core: int | None) -> None:
    """`require_dla` before any work starts; it takes a builder, so only when a core is asked for."""
    if core is not None:
        trt = import_tensorrt()
        require_dla(trt.Builder(trt.Logger(trt.Logger.WARNING)), core)


def require_dla(builder: trt.Builder, core: int | None) -> None:
    """Refuse a DLA core the device lacks: discrete GPUs have no DLA, and TensorRT 10.8 to 11.4.0
    support none (10.7 was the last 10.x with DLA; 11.4.1 brings it back on Jetson Orin, JetPack 7.2.2+)."""
    if core is None:
        return
    cores = builder.num_DLA_cores
    if cores == 0:
        raise TensorRTUnavailable(
            f"--dla-core {core}: this device has no DLA under TensorRT {import_tensorrt().__version__} (DLA exists on "
            "Jetson Orin with TensorRT 10.7 or older, or 11.4.1+ on JetPack 7.2.2+); build without --dla-core"
        )
    if core >= cores:
        raise UsageError(f"--dla-core {core}: this device has {cores} DLA core(s), numbered 0 to {cores - 1}")


def build_engine(
    onnx: SourceOnnx,
    settings: BuildSettings,
    engine_path: Path,
    gpu: Gpu | None = None,
    progress: Callable[[str], None] = lambda step: None,
    digests: Digests | None = None,
) -> EngineResult:
    """Parse the ONNX from its file (so external data is found), build, and write the engine
    with its manifest atomically. The timing cache, when one is named, is loaded before the
    build and saved after the engine is published, so that no cache problem can cost the engine."""
    trt = import_tensorrt()
    gpu = gpu or current_gpu()
    artifacts.prepare_destination(engine_path)
    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    require_dla(builder, settings.dla_core)
    network = builder.create_network(_network_flags())
    parser = trt.OnnxParser(network, logger)
    progress(f"parsing {onnx.path.name}")
    if not parser.parse_from_file(str(onnx.path)):
        raise ToolFailed(f"TensorRT could not parse {onnx.path.name}: " + "; ".join(_parser_errors(parser)))
    config = builder.create_builder_config()
    _configure(builder, network, config, settings)
    cache = cache_file(settings.timing_cache, str(trt.__version__), gpu) if settings.timing_cache else None
    notes = attach_timing_cache(config, cache) if cache else []
    progress(f"building the {settings.precision} engine (TensorRT {trt.__version__}, {gpu.name})")
    serialized: trt.IHostMemory | None = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ToolFailed("TensorRT could not build the engine (see its log above); nothing was written")
    engine_bytes = bytes(serialized)
    fields = {
        "variant": onnx.manifest.variant,
        "precision": settings.precision,
        "tensorrt": str(trt.__version__),
        "gpu": {"name": gpu.name, "compute_capability": gpu.sm},
        "settings": settings.recorded(),
        "timing_cache": str(cache) if cache else None,
        "source_onnx": Upstream(path=str(onnx.path), identity=onnx.manifest.identity),
        "build_seconds": round(time.perf_counter() - start, 1),
        "engine_bytes": len(engine_bytes),
        # the ONNX's output options, so parity compares the engine with the right torch output
        "options": onnx.manifest.options,
        "inputs": [_io(network.get_input(i)) for i in range(network.num_inputs)],
        "outputs": [_io(network.get_output(i)) for i in range(network.num_outputs)],
    }
    with artifacts.staging(engine_path) as scratch:
        staged = scratch / engine_path.name
        staged.write_bytes(engine_bytes)
        manifest = EngineManifest(**seal(fields, engine_key(onnx, settings), (digests or Digests()).files([staged])))
        manifest_file = scratch / manifest_path(engine_path).name
        write_manifest(manifest_file, manifest)
        artifacts.publish([staged, manifest_file], engine_path)
    if cache:
        notes += save_timing_cache(config, cache)
    return EngineResult(engine_path, manifest, tuple(notes))


def _network_flags() -> int:
    trt = import_tensorrt()
    if release(trt.__version__)[0] >= 11:
        return 0  # strongly typed is the only mode; the old flag is deprecated and ignored
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


def _parser_errors(parser: trt.OnnxParser, first: int = 5) -> list[str]:
    errors = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        where = error.node_name() or f"node {error.node()}"
        errors.append(f"{where} ({error.node_operator()}): {error.desc()}")
    shown = errors[:first]
    return shown + ([f"and {len(errors) - first} more"] if len(errors) > first else [])


def _configure(builder: trt.Builder, network: trt.INetworkDefinition, config: trt.IBuilderConfig,
               settings: BuildSettings) -> None:
    trt = import_tensorrt()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(settings.workspace_gib * 2**30))
    config.builder_optimization_level = settings.opt_level
    if settings.precision == "fp32" and not settings.tf32:
        # TensorRT enables TF32 by default: fp32 layers on Ampere and later would round to 10-bit mantissas
        config.clear_flag(trt.BuilderFlag.TF32)
    if settings.hardware_compat == "ampere+":
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if settings.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    if settings.tensor_names == "trtllm":
        from pe_export.trt import trtllm

        network.get_input(0).name, network.get_output(0).name = trtllm.INPUT, trtllm.OUTPUT
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = dims(tensor.shape)
        dynamic = shape[0] == -1
        if not dynamic and not settings.batch_min == settings.batch_max == shape[0]:
            raise UsageError(f"this ONNX has a static batch of {shape[0]}; use --batch {shape[0]}:{shape[0]}:{shape[0]}")
        low, opt, high = (trt.Dims([batch, *shape[1:]]) for batch in (settings.batch_min, settings.batch_opt, settings.batch_max))
        profile.set_shape(tensor.name, low, opt, high)
    config.add_optimization_profile(profile)


def _io(tensor: trt.ITensor) -> dict:
    return {"name": tensor.name, "shape": list(dims(tensor.shape)), "dtype": tensor.dtype.name}
