"""pe-export: Meta's Perception Encoder vision towers to ONNX, precision variants, TensorRT engines,
OpenVINO IR and Triton.

The public API is the library function behind each command, importable from here:

    from pe_export import ModelSource, export_variant, quantize_variant

    source = ModelSource("L14", "PE-Lang-L14-448.pt")
    fp32 = export_variant(source)                          # pe-export onnx
    int8 = quantize_variant(source, "int8", calib="photos/")  # pe-export quantize

Each name is imported on first use, so `import pe_export` loads neither torch nor a runtime.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it (the CLI calls these very functions)
_API = {
    "ModelSource": "pe_export.source",
    "load_model": "pe_export.model",
    "preprocess_batch": "pe_export.model.preprocess",
    "describe": "pe_export.model.info",
    "ExportOptions": "pe_export.onnx.spec",
    "export_variant": "pe_export.onnx.export",
    "check_onnx": "pe_export.onnx.check",
    "quantize_variant": "pe_export.pipeline.commands",
    "sensitivity_variant": "pe_export.pipeline.commands",
    "trt_variant": "pe_export.pipeline.commands",
    "openvino_variant": "pe_export.pipeline.commands",
    "executorch_variant": "pe_export.pipeline.commands",
    "Plan": "pe_export.pipeline",
    "open_runner": "pe_export.runners",
    "parity_variant": "pe_export.bench.parity",
    "BenchSettings": "pe_export.bench.bench",
    "bench_variant": "pe_export.bench.bench",
    "ServingOptions": "pe_export.serving.repository",
    "model_repository": "pe_export.serving.repository",
    "ServerSettings": "pe_export.serving.server",
    "running_server": "pe_export.serving.server",
    "LoadSettings": "pe_export.serving.loadtest",
    "run_loadtest": "pe_export.serving.loadtest",
    "EmbedOptions": "pe_export.embed",
    "embed": "pe_export.embed",
}
__all__ = ["__version__", *_API]

if TYPE_CHECKING:  # what type checkers and editors see; at run time __getattr__ imports on demand
    from pe_export.bench.bench import BenchSettings, bench_variant
    from pe_export.bench.parity import parity_variant
    from pe_export.embed import EmbedOptions, embed
    from pe_export.model import load_model
    from pe_export.model.info import describe
    from pe_export.model.preprocess import preprocess_batch
    from pe_export.onnx.check import check_onnx
    from pe_export.onnx.export import export_variant
    from pe_export.onnx.spec import ExportOptions
    from pe_export.pipeline import Plan
    from pe_export.pipeline.commands import (executorch_variant, openvino_variant, quantize_variant,
                                            sensitivity_variant, trt_variant)
    from pe_export.runners import open_runner
    from pe_export.serving.loadtest import LoadSettings, run_loadtest
    from pe_export.serving.repository import ServingOptions, model_repository
    from pe_export.serving.server import ServerSettings, running_server
    from pe_export.source import ModelSource


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'pe_export' has no attribute {name!r}")
    return getattr(importlib.import_module(_API[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
