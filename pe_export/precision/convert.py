"""From the fp32 ONNX to a precision variant, with NVIDIA ModelOpt (imported lazily):
fp16/bf16 by AutoCast mixed precision, int8/fp8 by explicit Q/DQ from ONNX PTQ."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx

from pe_export.errors import PeExportError
from pe_export.precision.calibrate import calibration_cache
from pe_export.precision.profiles import ROPE_NODES, MixedSection, QuantSection
from pe_export.quiet import quiet

MODELOPT_LOGGERS = ("modelopt", "polygraphy", "onnxruntime")
INSTALL_HINT = "install the precision extra: pip install 'pe-export[quant]'"


def _modelopt():
    try:
        import modelopt.onnx.autocast as autocast
        import modelopt.onnx.quantization as quantization
    except ImportError as exc:
        raise PeExportError(f"precision variants need NVIDIA ModelOpt ({exc.name} is missing); {INSTALL_HINT}") from exc
    return autocast, quantization


def mixed_precision(source: Path, target: Path, precision: str, section: MixedSection, external: bool) -> None:
    """fp16 or bf16 weights and math, with the listed ops, the RoPE nodes and excluded nodes kept in fp32."""
    autocast, _ = _modelopt()
    with quiet(*MODELOPT_LOGGERS):
        model = autocast.convert_to_mixed_precision(
            onnx_path=str(source), low_precision_type=precision, op_types_to_exclude=list(section.keep_fp32_ops),
            nodes_to_exclude=[ROPE_NODES, *section.exclude], keep_io_types=True, data_max=float("inf"),
            providers=["cpu"],
        )
    onnx.save(model, str(target), save_as_external_data=external,
              location=f"{target.name}.data" if external else None, all_tensors_to_one_file=True)


def quantize_qdq(source: Path, target: Path, precision: str, section: QuantSection, calibration: np.ndarray,
                 batch_size: int, method: str, input_name: str, external: bool) -> None:
    """Explicit, symmetric Q/DQ (per-channel weights) calibrated on CPU; Q/DQ placed for TensorRT fusion."""
    _, quantization = _modelopt()
    work = target.parent / "modelopt"
    work.mkdir()
    # ModelOpt rewrites its input in place (shape inference) and leaves helper files beside it
    staged_input = work / source.name
    shutil.copy(source, staged_input)
    if (source.parent / f"{source.name}.data").exists():
        shutil.copy(source.parent / f"{source.name}.data", work / f"{source.name}.data")
    size = calibration.shape[-1]
    out = work / "quantized.onnx"
    cache = None
    if precision == "int8":
        # Ranges streamed batch by batch. ModelOpt then runs its own (in-memory) calibration on one
        # image with min-max, only to place the Q/DQ nodes: the cache's scales replace its ranges.
        cache = calibration_cache(source, calibration, batch_size, method, list(section.op_types), input_name, work)
        calibration, batch_size, method = calibration[:1], 1, "max"
    with quiet(*MODELOPT_LOGGERS):
        quantization.quantize(
            onnx_path=str(staged_input), quantize_mode=precision, calibration_data={input_name: calibration},
            calibration_method=method, calibration_eps=["cpu"], calibration_shapes=f"{input_name}:{batch_size}x3x{size}x{size}",
            calibration_cache_path=str(cache) if cache else None,
            op_types_to_quantize=list(section.op_types), nodes_to_exclude=list(section.exclude) or None,
            disable_mha_qdq=not section.quantize_attention, high_precision_dtype="fp32", output_path=str(out),
            use_external_data_format=external, log_level="ERROR",
        )
    model = onnx.load(str(out))
    onnx.save(model, str(target), save_as_external_data=external,
              location=f"{target.name}.data" if external else None, all_tensors_to_one_file=True)
    shutil.rmtree(work)


def qdq_count(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return {op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
