"""TensorRT-LLM's multimodal layout: `DIR/vision/model.engine` beside `DIR/vision/config.json`.

TensorRT-LLM's multimodal runner (`tensorrt_llm/runtime/multimodal_model_runner.py`) opens
`<engine_dir>/vision/model.engine`, binds its input `input` and output `encoder_output`, and reads
`builder_config` from the config beside it: `model_type` picks its pre/post-processing (`llava` is the
plain `[N, T, D]` encoder path), `precision` is the dtype it feeds the input in (and, in its C++ session,
expects of the output), `output_shape` the embeddings' shape with -1 for the batch. The keys are those
`tensorrt_llm/tools/multimodal_builder.py` writes; `pe_export` adds what pe-export knows of the engine.
The LLM's engine goes to `DIR/llm/`, built by TensorRT-LLM itself.
"""

from __future__ import annotations

from pathlib import Path

from pe_export import artifacts
from pe_export.errors import UsageError
from pe_export.handoff import dtype_name
from pe_export.manifests import EngineManifest

INPUT, OUTPUT = "input", "encoder_output"  # the tensor names the runner binds
MODEL_TYPE = "llava"
PRECISIONS = ("float32", "float16", "bfloat16")  # the I/O dtypes TensorRT-LLM's config can name


def engine_path(directory: Path) -> Path:
    return Path(directory) / "vision" / "model.engine"


def check_layout(output_kind: str) -> None:
    """The runner takes `[N, T, D]` embeddings: tokens or PLM's image features, not a pooled vector."""
    if output_kind == "pooled":
        raise UsageError("TensorRT-LLM's multimodal runner takes token embeddings [N, T, D], not pooled ones; "
                         "export --features tokens, or a PLM variant's image_features")


def builder_config(manifest: EngineManifest) -> dict:
    """The config.json TensorRT-LLM reads for this engine."""
    (source,), (output,) = manifest.inputs, manifest.outputs
    if (source.name, output.name) != (INPUT, OUTPUT):
        raise UsageError(f"this engine's tensors are {source.name} -> {output.name}; TensorRT-LLM binds "
                         f"{INPUT} -> {OUTPUT}: build it with the trtllm layout")
    precision = dtype_name(source.dtype)
    if precision not in PRECISIONS or dtype_name(output.dtype) != precision:
        raise UsageError(f"TensorRT-LLM feeds and reads one dtype (its `precision`); this engine takes {source.dtype} "
                         f"and gives {output.dtype}")
    return {
        "builder_config": {
            "model_type": MODEL_TYPE,
            "model_name": "multiModal",
            "precision": precision,
            "strongly_typed": True,
            "max_batch_size": manifest.settings["batch_max"],
            "output_shape": [-1, *output.shape[1:]],
            "tensor_parallel": 1,
            "int8": False,  # TensorRT-LLM's implicit int8 flag; Q/DQ precision lives in the graph
            "use_refit": False,
            "use_strip_plan": False,
            "force_num_profiles": None,
        },
        "pe_export": {
            "variant": manifest.variant,
            "precision": manifest.precision,
            "engine_identity": manifest.identity,
            "tensorrt": manifest.tensorrt,
            "batch": [manifest.settings["batch_min"], manifest.settings["batch_opt"], manifest.settings["batch_max"]],
            "handoff": manifest.handoff.model_dump(mode="json") if manifest.handoff else None,
        },
    }


def write_config(engine: Path, manifest: EngineManifest) -> Path:
    """Write `config.json` beside the engine, whole or not at all."""
    config = engine.parent / "config.json"
    with artifacts.staging(config) as work:
        staged = work / config.name
        artifacts.write_json(staged, builder_config(manifest))
        artifacts.publish([staged], config)
    return config
