"""The runner interface."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Runner(Protocol):
    backend: str  # "torch", "torch-compile", "onnxruntime", "tensorrt"
    precision: str  # "fp32", "bf16", "fp16", "int8", "fp8"

    def run(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass; input (B, 3, S, S) float32, output float32."""

    def device(self) -> str:
        """Where it runs, in words (CPU model or GPU name)."""

    def versions(self) -> dict[str, str | None]:
        """Versions of the libraries doing the work."""

    def close(self) -> None:
        """Release the session, engine or model."""

    def __enter__(self): ...

    def __exit__(self, *exc) -> None: ...
