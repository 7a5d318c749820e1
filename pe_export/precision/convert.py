"""From the fp32 ONNX to a precision variant: fp16/bf16 by NVIDIA ModelOpt's AutoCast mixed
precision (imported lazily), int8/fp8 by explicit Q/DQ from streamed calibration ranges."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from pe_export.errors import PeExportError, require_extra
from pe_export.precision import qdq
from pe_export.precision.calibrate import activation_amax
from pe_export.precision.profiles import ROPE_NODES, CalibrationSection, MixedSection, QuantSection
from pe_export.precisions import get_precision
from pe_export.quiet import quiet

MODELOPT_LOGGERS = ("modelopt", "polygraphy", "onnxruntime")


def require_tools(precision: str) -> None:
    """Refuse before any work when the precision's converter is not installed."""
    if get_precision(precision).kind == "mixed":
        require_extra("quant", f"{precision} variants (NVIDIA ModelOpt AutoCast)", "modelopt.onnx.autocast")


def mixed_precision(source: Path, target: Path, precision: str, section: MixedSection, external: bool) -> None:
    """fp16 or bf16 weights and math, with the listed ops, the RoPE nodes and excluded nodes kept in fp32."""
    require_tools(precision)
    import modelopt.onnx.autocast as autocast

    with quiet(*MODELOPT_LOGGERS):
        model = autocast.convert_to_mixed_precision(
            onnx_path=str(source), low_precision_type=precision, op_types_to_exclude=list(section.keep_fp32_ops),
            nodes_to_exclude=[ROPE_NODES, *section.exclude], keep_io_types=True, data_max=float("inf"),
            providers=["cpu"],
        )
    drop_guessed_shapes(model.graph)
    onnx.save(model, str(target), save_as_external_data=external,
              location=f"{target.name}.data" if external else None, all_tensors_to_one_file=True)


def drop_guessed_shapes(graph: onnx.GraphProto) -> None:
    """Remove shape annotations whose symbolic dims the converter made up.

    AutoCast's shape inference names every unknown dim "unk", so the pooler's (B, 1, W) query and
    the (B, N, W) tokens claim the same shape, and onnxruntime warns while it re-plans their
    buffers. Only the dims the graph's inputs and outputs name mean something; onnxruntime infers
    the rest itself.
    """
    def dims(value: onnx.ValueInfoProto) -> set[str]:
        return {d.dim_param for d in value.type.tensor_type.shape.dim if d.dim_param}

    known = set().union(*(dims(v) for v in [*graph.input, *graph.output]))
    kept = [v for v in graph.value_info if dims(v) <= known]
    graph.ClearField("value_info")
    graph.value_info.extend(kept)


def calibration_method(precision: str, method: str) -> str:
    """The profile's method, unless the precision forces one (FP8 scales come from the absolute maximum)."""
    return get_precision(precision).calibration_method or method


def quantize_qdq(source: Path, target: Path, precision: str, section: QuantSection, calibration: np.ndarray,
                 settings: CalibrationSection, input_name: str, external: bool,
                 progress: Callable[[int, int], None] = lambda done, total: None) -> None:
    """Explicit, symmetric Q/DQ (per-channel weights) from ranges streamed on CPU; `progress` follows
    the calibration images."""
    model = onnx.load(str(source), load_external_data=False)
    sites = qdq.plan(model.graph, section)
    if not sites:
        raise PeExportError(f"no node is left to quantize to {precision}: check the profile's op_types and exclude")
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        amax = activation_amax(source, calibration, settings.batch_size, calibration_method(precision, settings.method),
                               list(section.op_types), input_name, Path(work), settings.provider, progress)
    onnx.load_external_data_for_model(model, str(source.parent))
    qdq.insert_qdq(model, sites, amax, precision)
    onnx.save(model, str(target), save_as_external_data=external,
              location=f"{target.name}.data" if external else None, all_tensors_to_one_file=True)


def qdq_count(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return {op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
