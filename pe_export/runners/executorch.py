"""Running an ExecuTorch program (.pte) on ExecuTorch's own runtime, its XNNPACK delegate on the CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pe_export.errors import UsageError, require_extra
from pe_export.quiet import native_quiet, quiet
from pe_export.runners.base import Runner
from pe_export.versions import versions

PRECISIONS = ("fp32", "fp16", "int8")  # what pe-export's programs compute in on ExecuTorch's XNNPACK delegate


def require_executorch() -> None:
    require_extra("executorch", "ExecuTorch programs", "executorch")


class ExecutorchRunner(Runner):
    """One loaded program's `forward` method. A program's batch is fixed when it is traced: a larger
    batch runs as consecutive calls of the program's (what an app on a device does with a queue of
    images). `threads`: the size of ExecuTorch's process-wide thread pool (XNNPACK's), set when given."""

    backend = "executorch"
    gpu = False
    libraries = ("executorch",)

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None):
        require_executorch()
        with quiet("torchao", "torch"):  # torchao narrates the optional kernels it cannot load
            from executorch.extension.pybindings.portable_lib import _unsafe_reset_threadpool
            from executorch.runtime import Runtime

        self.precision = precision
        try:
            with native_quiet():  # the thread pool's CPU probe logs what it cannot read when it starts
                if threads:
                    _unsafe_reset_threadpool(threads)
                self.method = Runtime.get().load_program(Path(path)).load_method("forward")
        except (RuntimeError, ValueError) as exc:
            raise UsageError(f"ExecuTorch cannot load {path}: {exc}; make it again with pe-export executorch") from None

        self.batch = self.method.metadata.input_tensor_meta(0).sizes()[0]

    def versions(self) -> dict[str, str | None]:
        return versions(self.libraries)  # the module has no __version__

    def run(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if len(batch) % self.batch:
            raise UsageError(f"this program takes batches of {self.batch} images, not {len(batch)}")
        parts = [torch.from_numpy(np.ascontiguousarray(batch[i:i + self.batch])) for i in range(0, len(batch), self.batch)]
        return np.concatenate([self.method.execute([part])[0].numpy() for part in parts])

    def close(self) -> None:
        self.method = None
