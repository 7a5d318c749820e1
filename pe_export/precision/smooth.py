"""SmoothQuant-style outlier migration, as an ONNX graph rewrite before Q/DQ placement.

Real CLIP-style towers have a few LayerNorm output channels tens to a hundred times larger than
the rest, and a per-tensor activation scale spends its range on them. For a LayerNormalization
whose output only feeds MatMuls with weight initializers, each channel j gets

    s_j = max|X_j|^a / max|W_j|^(1-a)

(X_j: channel j of the LayerNorm output over the calibration set, W_j: row j of every weight that
reads it). The LayerNorm's scale and bias are divided by s and the weights' rows multiplied by it,
so X W is unchanged: outliers move from the activation, quantized per tensor, into the weights,
quantized per output channel. The result is a plain ONNX file, so TensorRT, onnxruntime and
OpenVINO run it as it is.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from pe_export.precision.qdq import Site

FLOOR = 1e-5  # no channel is scaled to nothing, and an all-zero channel keeps a finite scale


@dataclass(frozen=True)
class Pair:
    """A LayerNorm and the MatMuls reading its output: where a per-channel scale folds exactly."""

    norm: str  # LayerNormalization node name
    tensor: str  # its output, the activation the MatMuls read
    gamma: str  # the LayerNorm's scale initializer
    beta: str | None  # its bias initializer, if it has one
    weights: tuple[str, ...]  # the (K, N) weight initializer of each MatMul reading `tensor`


def pairs(graph: onnx.GraphProto, sites: list[Site]) -> list[Pair]:
    """Every LayerNorm -> MatMul pair where the fold is exact and at least one MatMul is quantized.

    Exact means: the LayerNorm normalizes the last axis, its scale and bias belong to it alone, its
    output is no graph output and is read only by MatMuls whose 2-D weight initializer is theirs
    alone (a residual Add reading it would see the scaled values).
    """
    initializers = {init.name: init for init in graph.initializer}
    uses = Counter(name for node in graph.node for name in node.input)
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in set(node.input):
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    quantized = {s.node for s in sites}
    found = []
    for node in graph.node:
        if node.op_type != "LayerNormalization" or node.output[0] in outputs:
            continue
        params = [name for name in node.input[1:3] if name]
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if axis != -1 or not all(name in initializers and uses[name] == 1 for name in params):
            continue
        linears = readers.get(node.output[0], [])
        exact = linears and all(
            n.op_type == "MatMul" and list(n.input).index(node.output[0]) == 0 and n.input[1] in initializers
            and len(initializers[n.input[1]].dims) == 2 and uses[n.input[1]] == 1 for n in linears)
        if exact and any(n.name in quantized for n in linears):
            found.append(Pair(node.name, node.output[0], params[0], params[1] if len(params) > 1 else None,
                              tuple(n.input[1] for n in linears)))
    return found


def weight_row_max(graph: onnx.GraphProto, pair: Pair, folder: Path) -> np.ndarray:
    """max|W_j| over every weight of the pair, per input channel j; weights are read one at a
    time from the model's folder (external data), never all at once."""
    initializers = {init.name: init for init in graph.initializer}
    rows = [np.abs(numpy_helper.to_array(initializers[name], str(folder))).max(axis=1) for name in pair.weights]
    return np.max(rows, axis=0)


def scales(activation_max: np.ndarray, weight_max: np.ndarray, alpha: float) -> np.ndarray:
    """The per-channel migration scales, as the SmoothQuant paper and its reference code define them."""
    act = np.maximum(np.asarray(activation_max, np.float64), FLOOR)
    weight = np.maximum(np.asarray(weight_max, np.float64), FLOOR)
    return np.maximum(act**alpha / weight ** (1 - alpha), FLOOR)


def fold(model: onnx.ModelProto, found: list[Pair], channel_scales: dict[str, np.ndarray]) -> None:
    """Divide each pair's LayerNorm scale and bias by its scales and multiply its weights' rows by
    them, in place (the model's weights must be loaded)."""
    initializers = {init.name: init for init in model.graph.initializer}

    def rescale(name: str, factor: np.ndarray) -> None:
        tensor = initializers[name]
        value = numpy_helper.to_array(tensor)
        tensor.CopyFrom(numpy_helper.from_array((value * factor).astype(value.dtype), name))

    for pair in found:
        s = channel_scales[pair.tensor]
        for name in (pair.gamma, pair.beta):
            if name:
                rescale(name, 1 / s)
        for name in pair.weights:
            rescale(name, s[:, None])


def outlier_ratio(channel_max: np.ndarray) -> float:
    """How far the largest channel stands out: its maximum over the median channel's."""
    return float(np.max(channel_max) / max(float(np.median(channel_max)), FLOOR))
