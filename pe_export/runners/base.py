"""The runner interface: one model or artifact, opened once, run batch by batch, then closed."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod

import numpy as np

from pe_export.runners.device import cpu_name, cuda_name


class Runner(ABC):
    """What parity and latency code is written against; a context manager that closes itself."""

    backend: str  # a name from runners.BACKENDS
    precision: str  # a name from precisions.PRECISIONS
    gpu: bool  # runs on the first CUDA GPU rather than the CPU
    libraries: tuple[str, ...]  # the modules doing the work, whose versions a report records

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray:
        """One forward pass; input (B, 3, S, S) float32, output float32."""

    def device(self) -> str:
        """Where it runs, in words (CPU model or GPU name)."""
        return cuda_name() if self.gpu else cpu_name()

    def versions(self) -> dict[str, str | None]:
        """Versions of the libraries doing the work, as the imported modules report them."""
        return {name: getattr(importlib.import_module(name), "__version__", None) for name in self.libraries}

    @abstractmethod
    def close(self) -> None:
        """Release the session, engine or model."""

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
