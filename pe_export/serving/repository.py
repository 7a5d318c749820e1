"""`pe-export triton`: a Triton Inference Server model repository for one artifact.

    <repository>/<model>/config.pbtxt
    <repository>/<model>/1/model.plan                  TensorRT engine (platform tensorrt_plan)
    <repository>/<model>/1/model.onnx [+ its .data]    ONNX of any precision (onnxruntime_onnx)

Inputs and outputs are named, typed and shaped from the artifact's manifest; the batch limit and
dynamic batching from the engine's profile or the options given; the variant, precision and
source recorded in the config's parameters. The config is written as protobuf text format, which
Triton's own ModelConfig schema parses (checked in the tests with the tritonclient package).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import UsageError
from pe_export.manifests import (EngineManifest, GraphManifest, RepositoryManifest, TensorInfo, Upstream,
                                 manifest_path, seal, write_manifest)
from pe_export.runners import ENGINE_SUFFIXES
from pe_export.serving import InstanceKind
from pe_export.validate import artifact_manifest

TRITON_TYPES = {"float32": "TYPE_FP32", "FLOAT": "TYPE_FP32", "float16": "TYPE_FP16", "HALF": "TYPE_FP16",
                "bfloat16": "TYPE_BF16", "BF16": "TYPE_BF16"}
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PREPROCESS_SUFFIX, IMAGES_SUFFIX = "_preprocess", "_images"  # the models `--images` adds beside `<name>`


class ServingOptions(BaseModel):
    """How Triton serves the model; None takes the artifact's own limits."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Optional[str] = None
    max_batch_size: Optional[int] = Field(None, ge=1)
    preferred_batch_sizes: list[int] = []
    max_queue_delay_us: int = Field(100, ge=0)
    instance_kind: InstanceKind = "gpu"
    instances: int = Field(1, ge=1)
    tensorrt_accelerator: bool = False  # onnxruntime on GPU: let its TensorRT execution provider run the graph
    images: bool = False  # an ensemble in front that takes encoded images and preprocesses them

    @model_validator(mode="after")
    def _preferred_within_limit(self) -> "ServingOptions":
        too_big = [b for b in self.preferred_batch_sizes if self.max_batch_size and b > self.max_batch_size]
        if too_big or any(b < 1 for b in self.preferred_batch_sizes):
            raise ValueError(f"preferred batch sizes must be between 1 and the max batch size, got {too_big or self.preferred_batch_sizes}")
        return self


@dataclass(frozen=True)
class Repository:
    model_dir: Path
    config: Path
    text: str
    manifest: RepositoryManifest
    reused: bool = False  # the model folder there was made from this artifact with this config


def model_repository(artifact: Path, repository: Path, options: ServingOptions = ServingOptions(),
                     digests: Digests | None = None, progress: Callable[[str], None] = lambda step: None) -> Repository:
    """Write `<repository>/<name>/` for the artifact (a model folder already there is replaced whole),
    or keep the one there when it was made from this very artifact (its identity) with this config.
    Its manifest, `config.pbtxt.json` in the model folder, records both."""
    artifact = Path(artifact)
    digests = digests or Digests()
    manifest = artifact_manifest(artifact)
    artifacts.check_unchanged(artifact, manifest, digests)
    engine = artifact.suffix in ENGINE_SUFFIXES
    name = model_name(manifest, options, engine)
    text = config_text(name, manifest, options, engine, artifact.name)
    image_models = image_model_configs(name, manifest, options, engine) if options.images else {}
    target = repository / name
    config = target / "config.pbtxt"
    key = {"artifact": manifest.identity, "config": text}
    kept = artifacts.reuse(config, key, digests, progress)
    reused = isinstance(kept, RepositoryManifest)
    if not reused:
        artifacts.prepare_destination(config)
        with artifacts.staging(target) as scratch:
            version = scratch / "1"
            version.mkdir()
            placed = [_place(artifact, version / ("model.plan" if engine else "model.onnx"))]
            placed += [_place(artifact.parent / companion, version / companion)  # external data keeps its name
                       for companion in manifest.files if companion != artifact.name]
            (scratch / "config.pbtxt").write_text(text)
            fields = {"variant": manifest.variant, "precision": manifest.precision, "model": name,
                      "artifact": Upstream(path=str(artifact), identity=manifest.identity)}
            kept = RepositoryManifest(**seal(fields, key, digests.files([scratch / "config.pbtxt", *placed], scratch)))
            write_manifest(scratch / manifest_path(config).name, kept)
            _swap_in(scratch, target)
    write_image_models(repository, image_models)
    return Repository(target, config, text, kept, reused)  # type: ignore[arg-type]


def write_image_models(repository: Path, configs: dict[str, str]) -> None:
    """Write the models of `image_model_configs` (none when it gave none) into the repository."""
    for model, text in configs.items():
        target = repository / model
        artifacts.prepare_destination(target / "config.pbtxt")
        with artifacts.staging(target) as scratch:
            (scratch / "1").mkdir()
            if model.endswith(PREPROCESS_SUFFIX):
                shutil.copyfile(Path(__file__).with_name("preprocess_model.py"), scratch / "1" / "model.py")
            (scratch / "config.pbtxt").write_text(text)
            _swap_in(scratch, target)


def image_model_configs(name: str, manifest: GraphManifest, options: ServingOptions, engine: bool) -> dict[str, str]:
    """`<name>_preprocess` (encoded image -> pixels, pe-export's preprocessing on Triton's python
    backend) and `<name>_images`, the ensemble that chains it to the model so that clients send image
    files: their config.pbtxt by model name.

    One image per request (its bytes vary in length, so Triton cannot batch them): the ensemble
    hands the model a batch of one, which dynamic batching then gathers with others; a PerceptionLM
    image is its thumbnail and tiles, one batch of 2 to 1 + max tiles."""
    inputs, outputs = manifest.inputs, manifest.outputs
    max_tiles = manifest.handoff.max_tiles if manifest.handoff else 0
    batch = manifest.static_batch
    if batch not in (None, 1) or (max_tiles and batch is not None):
        raise UsageError(f"--images sends one image per request, and this artifact takes batches of exactly {batch}; "
                         "export it with a dynamic batch" + ("" if max_tiles else " or batch 1"))
    limit = _batch_limit(manifest, options, engine) if batch is None else 1
    if max_tiles and limit < max_tiles + 1:
        raise UsageError(f"--images cuts a PerceptionLM image into a thumbnail and up to {max_tiles} tiles, "
                         f"{max_tiles + 1} inputs in one batch, more than the model's batch limit {limit}: serve it "
                         f"with --max-batch {max_tiles + 1} or more (an engine: build it with a batch max of "
                         f"{max_tiles + 1}, as the pe-plm profiles do)")
    size = inputs[0].shape[-1]
    preprocess, ensemble = f"{name}{PREPROCESS_SUFFIX}", f"{name}{IMAGES_SUFFIX}"
    count = -1 if max_tiles else 1  # the batch one image makes
    one = lambda shape: ", ".join(str(d) for d in [count, *shape[1:]])  # noqa: E731 - one image's batch
    image_input = 'input [{ name: "image" data_type: TYPE_UINT8 dims: [-1] }]'
    preprocess_config = "\n".join([
        f'name: "{preprocess}"', 'backend: "python"', "max_batch_size: 0", image_input,
        f'output [{{ name: "pixels" data_type: TYPE_FP32 dims: [{one(inputs[0].shape)}] }}]',
        "instance_group [{ kind: KIND_CPU count: 1 }]",
        *(f'parameters {{ key: "pe_export.{key}" value: {{ string_value: "{value}" }} }}'
          for key, value in (("image_size", size), ("max_tiles", max_tiles)))]) + "\n"
    steps = [
        f'{{ model_name: "{preprocess}" model_version: -1 input_map {{ key: "image" value: "image" }} '
        'output_map { key: "pixels" value: "pixels" } }',
        f'{{ model_name: "{name}" model_version: -1 input_map {{ key: "{inputs[0].name}" value: "pixels" }} '
        + " ".join(f'output_map {{ key: "{o.name}" value: "{o.name}" }}' for o in outputs) + " }",
    ]
    ensemble_config = "\n".join([
        f'name: "{ensemble}"', 'platform: "ensemble"', "max_batch_size: 0", image_input,
        *(f'output [{{ name: "{o.name}" data_type: {_triton_type(o)} dims: [{one(o.shape)}] }}]' for o in outputs),
        f"ensemble_scheduling {{ step [ {', '.join(steps)} ] }}"]) + "\n"
    return {preprocess: preprocess_config, ensemble: ensemble_config}


def model_name(manifest: GraphManifest, options: ServingOptions, engine: bool) -> str:
    name = options.name or _default_name(manifest, engine)
    if not MODEL_NAME.match(name):
        raise UsageError(f"model name {name!r}: use letters, digits, '-', '_' and '.'")
    return name


def config_text(name: str, manifest: GraphManifest, options: ServingOptions, engine: bool, artifact: str,
                python_model: dict[str, str] | None = None) -> str:
    """The model's config.pbtxt: protobuf text format of Triton's ModelConfig.

    With `python_model` (the parameters the model reads), the model is served by Triton's python
    backend instead of its onnxruntime or TensorRT backend: `pe-export serve` runs it that way."""
    inputs, outputs = manifest.inputs, manifest.outputs
    dynamic = manifest.static_batch is None
    limit = _batch_limit(manifest, options, engine) if dynamic else 0
    runs_on = ('backend: "python"' if python_model is not None else
               'platform: "tensorrt_plan"' if engine else 'platform: "onnxruntime_onnx"')
    lines = [f'name: "{name}"', runs_on, f"max_batch_size: {limit}"]
    for kind, tensors in (("input", inputs), ("output", outputs)):
        for tensor in tensors:
            dims = tensor.shape[1:] if dynamic else tensor.shape
            lines.append(f'{kind} [{{ name: "{tensor.name}" data_type: {_triton_type(tensor)} '
                         f'dims: [{", ".join(str(d) for d in dims)}] }}]')
    if dynamic:
        preferred = options.preferred_batch_sizes or sorted({b for b in (_opt(manifest), limit) if b and b > 1})
        lines.append(f"dynamic_batching {{ preferred_batch_size: [{', '.join(map(str, preferred))}] "
                     f"max_queue_delay_microseconds: {options.max_queue_delay_us} }}")
    kind = "KIND_GPU" if engine or options.instance_kind == "gpu" else "KIND_CPU"
    lines.append(f"instance_group [{{ kind: {kind} count: {options.instances} }}]")
    if options.tensorrt_accelerator and not engine:
        lines.append('optimization { execution_accelerators { gpu_execution_accelerator: [{ name: "tensorrt" }] } }')
    recorded = {"pe_export.variant": manifest.variant, "pe_export.precision": manifest.precision,
                "pe_export.artifact": artifact, **(python_model or {})}
    lines += [f'parameters {{ key: "{k}" value: {{ string_value: "{_quoted(v)}" }} }}' for k, v in recorded.items()]
    return "\n".join(lines) + "\n"


def _quoted(value: str) -> str:
    """A string inside protobuf text format's double quotes (paths may hold either character)."""
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _batch_limit(manifest: GraphManifest, options: ServingOptions, engine: bool) -> int:
    if isinstance(manifest, EngineManifest):
        engine_max = manifest.settings["batch_max"]
        if options.max_batch_size and options.max_batch_size > engine_max:
            raise UsageError(f"the engine's profile takes batches up to {engine_max}; "
                             f"--max-batch {options.max_batch_size} is more than it can run")
        return options.max_batch_size or engine_max
    # a PerceptionLM image is its thumbnail and up to max_tiles tiles, all in one batch
    return options.max_batch_size or (manifest.handoff.max_tiles + 1 if manifest.handoff else 8)


def _opt(manifest: GraphManifest) -> int | None:
    return manifest.settings.get("batch_opt") if isinstance(manifest, EngineManifest) else None


def _triton_type(tensor: TensorInfo) -> str:
    try:
        return TRITON_TYPES[tensor.dtype]
    except KeyError:
        raise UsageError(f"tensor {tensor.name} has type {tensor.dtype}, which pe-export does not serve") from None


def _default_name(manifest: GraphManifest, engine: bool) -> str:
    runtime = "trt" if engine else "onnx"
    return f"{manifest.variant.lower()}-{manifest.precision}-{runtime}"


def _place(source: Path, target: Path) -> Path:
    """A hard link where the file system allows (weights are large), else a copy; returns `target`."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def _swap_in(staged: Path, target: Path) -> None:
    """Move the staged model folder into place; a previous one is moved aside first, then removed."""
    old = target.with_name(f".{target.name}.{os.getpid()}.old")
    if target.exists():
        os.replace(target, old)
    os.replace(staged, target)
    with contextlib.suppress(OSError):
        shutil.rmtree(old)
