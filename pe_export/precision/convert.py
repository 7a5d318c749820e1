"""From the fp32 ONNX to a precision variant: fp16/bf16 by NVIDIA ModelOpt's AutoCast mixed
precision (imported lazily), int8/fp8 by explicit Q/DQ from streamed calibration ranges."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx

from pe_export.errors import PeExportError
from pe_export.precision import qdq
from pe_export.precision.calibrate import activation_amax
from pe_export.precision.profiles import ROPE_NODES, CalibrationSection, MixedSection, QuantSection
from pe_export.quiet import quiet

MODELOPT_LOGGERS = ("modelopt", "polygraphy", "onnxruntime")
INSTALL_HINT = "install the precision extra: pip install 'pe-export[quant]'"


def _modelopt():
    try:
        import modelopt.onnx.autocast as autocast
    except ImportError as exc:
        raise PeExportError(f"fp16/bf16 variants need NVIDIA ModelOpt ({exc.name} is missing); {INSTALL_HINT}") from exc
    return autocast


def mixed_precision(source: Path, target: Path, precision: str, section: MixedSection, external: bool) -> None:
    """fp16 or bf16 weights and math, with the listed ops, the RoPE nodes and excluded nodes kept in fp32."""
    autocast = _modelopt()
    with quiet(*MODELOPT_LOGGERS):
        model = autocast.convert_to_mixed_precision(
            onnx_path=str(source), low_precision_type=precision, op_types_to_exclude=list(section.keep_fp32_ops),
            nodes_to_exclude=[ROPE_NODES, *section.exclude], keep_io_types=True, data_max=float("inf"),
            providers=["cpu"],
        )
    onnx.save(model, str(target), save_as_external_data=external,
              location=f"{target.name}.data" if external else None, all_tensors_to_one_file=True)


def calibration_method(precision: str, method: str) -> str:
    """FP8 scales come from the absolute maximum, as TensorRT and ModelOpt take them; entropy is for INT8."""
    return "max" if precision == "fp8" else method


def quantize_qdq(source: Path, target: Path, precision: str, section: QuantSection, calibration: np.ndarray,
                 settings: CalibrationSection, input_name: str, external: bool) -> None:
    """Explicit, symmetric Q/DQ (per-channel weights) from ranges streamed on CPU."""
    model = onnx.load(str(source), load_external_data=False)
    sites = qdq.plan(model.graph, section)
    if not sites:
        raise PeExportError(f"no node is left to quantize to {precision}: check the profile's op_types and exclude")
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        amax = activation_amax(source, calibration, settings.batch_size, calibration_method(precision, settings.method),
                               list(section.op_types), input_name, Path(work), settings.provider)
    onnx.load_external_data_for_model(model, str(source.parent))
    qdq.insert_qdq(model, sites, amax, precision)
    onnx.save(model, str(target), save_as_external_data=external,
              location=f"{target.name}.data" if external else None, all_tensors_to_one_file=True)


def qdq_count(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return {op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
