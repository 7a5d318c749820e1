"""Running an ONNX artifact with onnxruntime (CPU; CUDA and TensorRT providers where installed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pe_export.errors import Unavailable
from pe_export.runners.base import Runner

CPU = "CPUExecutionProvider"
PROVIDERS = {"cpu": CPU, "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def require_provider(provider: str) -> str:
    """onnxruntime's name of the provider (cpu, cuda, tensorrt), refused with exit code 3 where this
    onnxruntime lacks it."""
    import onnxruntime as ort

    wanted = PROVIDERS[provider]
    if wanted not in ort.get_available_providers():
        raise Unavailable(
            f"onnxruntime here has no {wanted} (it has {', '.join(ort.get_available_providers())}); "
            "install the gpu extra (pip install 'pe-export[gpu]', which brings onnxruntime-gpu) for the CUDA and "
            "TensorRT providers"
        )
    return wanted


class OrtRunner(Runner):
    """An onnxruntime session over one model file (external data is found beside it)."""

    backend = "onnxruntime"
    libraries = ("onnxruntime",)

    def __init__(self, path: Path, provider: str = "cpu", threads: int | None = None, precision: str = "fp32"):
        import onnxruntime as ort

        wanted = require_provider(provider)
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.provider = provider
        self.gpu = provider != "cpu"
        self.precision = precision
        self.session = ort.InferenceSession(str(path), options, providers=[wanted, CPU] if wanted != CPU else [CPU])
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]

    def close(self) -> None:
        self.session = None

