"""Running the PyTorch model: eager fp32/bf16, or torch.compile'd."""

from __future__ import annotations

import copy

import numpy as np
import torch

from pe_export.errors import UsageError
from pe_export.precisions import get_precision
from pe_export.runners.base import Runner


class TorchRunner(Runner):
    """A torch module (the PE tower or one export head) on CPU or CUDA; outputs come back as fp32."""

    libraries = ("torch",)

    def __init__(self, module: torch.nn.Module, precision: str = "fp32", compile: bool = False, device: str = "cpu"):
        self.precision = precision
        self.backend = "torch-compile" if compile else "torch"
        self.device_type = device
        self.gpu = device != "cpu"
        dtype = get_precision(precision).torch_dtype
        if dtype is None:
            raise UsageError(f"torch has no {precision} compute; run {precision} through its ONNX artifact")
        self.dtype = getattr(torch, dtype)
        module = module.eval()
        if precision != "fp32" or device != "cpu":
            # a converted copy, so the caller's fp32 CPU model stays the reference
            module = copy.deepcopy(module).to(device=device, dtype=self.dtype)
        self.module = torch.compile(module) if compile else module

    def run(self, batch: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(batch).to(self.device_type, self.dtype)
        with torch.inference_mode():
            out = self.module(x)
        return out.float().cpu().numpy()

    def close(self) -> None:
        self.module = None


