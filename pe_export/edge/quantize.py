"""INT8 programs for XNNPACK: PT2E quantization of the export-friendly tower, its activation ranges
observed on the profile's calibration images. The scheme is XNNPACK's (`INT8_SCHEME`): every linear
and matmul then runs in XNNPACK's int8 kernels."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn


def calibration_batches(images: np.ndarray, batch: int) -> Iterator[torch.Tensor]:
    """The calibration images in the program's fixed batch; a last, partial batch is filled up with the
    first images (seeing an image twice moves no observed range)."""
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        if len(chunk) < batch:
            chunk = np.concatenate([chunk, np.resize(images, (batch - len(chunk), *images.shape[1:]))])
        yield torch.from_numpy(np.ascontiguousarray(chunk))


def quantized_program(module: nn.Module, example: torch.Tensor, calibration: np.ndarray) -> torch.export.ExportedProgram:
    """The exported program of `module` with XNNPACK's int8 quantize/dequantize pairs, calibrated."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    with torch.no_grad():
        observed = prepare_pt2e(torch.export.export(module, (example,)).module(), quantizer)
        for batch in calibration_batches(calibration, example.shape[0]):
            observed(batch)
        return torch.export.export(convert_pt2e(observed), (example,))
