"""Running the PyTorch model: eager fp32/bf16, or torch.compile'd."""

from __future__ import annotations

import numpy as np
import torch

from pe_export.runners.device import cpu_name, cuda_name

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TorchRunner:
    """A torch module (the PE tower or one export head) on CPU or CUDA; outputs come back as fp32."""

    def __init__(self, module: torch.nn.Module, precision: str = "fp32", compile: bool = False, device: str = "cpu"):
        self.precision = precision
        self.backend = "torch-compile" if compile else "torch"
        self.device_type = device
        self.dtype = DTYPES[precision]
        module = module.eval()
        if precision != "fp32" or device != "cpu":
            # a converted copy, so the caller's fp32 CPU model stays the reference
            module = _copy(module).to(device=device, dtype=self.dtype)
        self.module = torch.compile(module) if compile else module

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device_type, self.dtype)
        with torch.inference_mode():
            out = self.module(x)
        return out.float().cpu().numpy()

    def device(self) -> str:
        return cpu_name() if self.device_type == "cpu" else cuda_name()

    def versions(self) -> dict[str, str | None]:
        return {"torch": torch.__version__}

    def close(self) -> None:
        self.module = None

    def __enter__(self) -> "TorchRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module)
