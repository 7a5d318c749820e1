"""Running an ONNX artifact with onnxruntime."""

from __future__ import annotations

from pathlib import Path

import numpy as np

CPU = "CPUExecutionProvider"


class OrtRunner:
    """An onnxruntime session over one model file (external data is found beside it)."""

    backend = "onnxruntime"

    def __init__(self, path: Path, providers: tuple[str, ...] = (CPU,), threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=list(providers))
        self.input_name = self.session.get_inputs()[0].name
        self.output_name = self.session.get_outputs()[0].name

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output_name], {self.input_name: batch})[0]
