"""From the fp32 ONNX to a precision variant: fp16/bf16 by NVIDIA ModelOpt's AutoCast mixed
precision (imported lazily), int8/fp8 by explicit Q/DQ from streamed calibration ranges, after the
outlier smoothing the profile asks for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from pe_export.errors import UsageError, require_extra
from pe_export.precision import qdq, smooth
from pe_export.precision.calibrate import Ranges, activation_ranges
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
    save_model(model, target, external)


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


@dataclass(frozen=True)
class Calibrated:
    """Everything Q/DQ placement needs from calibration, kept so that placement can be redone with
    other sites excluded (automatic fallback) without calibrating again."""

    source: Path  # the fp32 ONNX
    precision: str
    sites: list[qdq.Site]
    ranges: Ranges
    pairs: list[smooth.Pair]  # the LayerNorm -> MatMul pairs the smoothing scales fold into
    alpha: float | None

    def smoothing_summary(self) -> dict | None:
        """What the migration did, for the manifest: how far the largest channel stood out before and after."""
        if self.alpha is None:
            return None
        before = [smooth.outlier_ratio(self.ranges.channel_max[p.tensor]) for p in self.pairs]
        after = [smooth.outlier_ratio(self.ranges.channel_max[p.tensor] / self.ranges.scales[p.tensor]) for p in self.pairs]
        return {"alpha": self.alpha, "pairs": len(self.pairs),
                "largest_channel_over_median": {"before": round(max(before, default=1.0), 2),
                                                "after": round(max(after, default=1.0), 2)}}


def calibrate(source: Path, precision: str, section: QuantSection, calibration: np.ndarray,
              settings: CalibrationSection, input_name: str, work: Path,
              progress: Callable[[str, int, int], None] = lambda step, done, total: None) -> Calibrated:
    """Plan the Q/DQ sites, find the smoothing pairs and stream the calibration set (in `work`)."""
    graph = onnx.load(str(source), load_external_data=False).graph
    sites = qdq.plan(graph, section)
    if not sites:
        raise UsageError(f"no node is left to quantize to {precision}: check the profile's op_types and exclude")
    pairs = smooth.pairs(graph, sites) if section.smoothing is not None else []
    weight_max = {p.tensor: smooth.weight_row_max(graph, p, source.parent) for p in pairs}
    ranges = activation_ranges(source, calibration, settings.batch_size, calibration_method(precision, settings.method),
                               qdq.activations(sites), input_name, work, settings.provider,
                               (section.smoothing, weight_max) if pairs else None, progress)
    return Calibrated(source, precision, sites, ranges, pairs, section.smoothing)


def smoothed_model(calibrated: Calibrated) -> onnx.ModelProto:
    """The fp32 model, weights loaded, with the smoothing scales folded in (the same function)."""
    model = onnx.load(str(calibrated.source))
    smooth.fold(model, calibrated.pairs, calibrated.ranges.scales)
    return model


def quantized_model(calibrated: Calibrated, excluded: frozenset[str] = frozenset()) -> onnx.ModelProto:
    """The smoothed model with Q/DQ pairs on every site whose node is not in `excluded`."""
    model = smoothed_model(calibrated)
    qdq.insert_qdq(model, [s for s in calibrated.sites if s.node not in excluded], calibrated.ranges.amax,
                   calibrated.precision)
    return model


def save_model(model: onnx.ModelProto, target: Path, external: bool) -> None:
    onnx.save(model, str(target), save_as_external_data=external,
              location=f"{target.name}.data" if external else None, all_tensors_to_one_file=True)


def qdq_count(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    return {op: sum(n.op_type == op for n in model.graph.node) for op in ("QuantizeLinear", "DequantizeLinear")}
