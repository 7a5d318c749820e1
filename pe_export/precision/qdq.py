"""Explicit Q/DQ placement for strongly typed TensorRT builds (and onnxruntime's QDQ kernels).

The layout is the one NVIDIA ModelOpt produces for TensorRT: every quantized GEMM or convolution
reads its activation through a per-tensor QuantizeLinear/DequantizeLinear pair and its fp32 weight
through a per-channel pair, both symmetric, so TensorRT folds the weight pair and fuses the rest
into an INT8 or FP8 kernel. Placing the nodes here, from ranges streamed by the calibrator, keeps
memory at one copy of the model; ModelOpt's own placement pass needed about 13.6 GB for L14.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from pe_export.errors import ToolFailed
from pe_export.precision.profiles import QuantSection

QUANT_TYPES = {"int8": TensorProto.INT8, "fp8": TensorProto.FLOAT8E4M3FN}
QMAX = {"int8": 127.0, "fp8": 448.0}  # symmetric int8 range; largest finite float8 e4m3fn
TINY = 1e-12  # an all-zero tensor still gets a valid, positive scale


@dataclass(frozen=True)
class Site:
    """One input of one node that reads through a Q/DQ pair; `axis` is set for per-channel weights."""

    node: str
    index: int
    tensor: str
    axis: int | None = None


def plan(graph: onnx.GraphProto, section: QuantSection) -> list[Site]:
    """The inputs to quantize: activation and weight of each GEMM/convolution the profile selects.

    MatMuls between two activations (decomposed attention) are quantized only when the profile
    asks for attention quantization.
    """
    excluded = [re.compile(p) for p in section.exclude]
    weights = {init.name: init for init in graph.initializer}
    sites: list[Site] = []
    for node in graph.node:
        if node.op_type not in section.op_types or any(p.search(node.name) for p in excluded):
            continue
        axis = _weight_axis(node, weights)
        if axis is not None:
            sites += [Site(node.name, 0, node.input[0]), Site(node.name, 1, node.input[1], axis)]
        elif node.op_type == "MatMul" and section.quantize_attention:
            sites += [Site(node.name, 0, node.input[0]), Site(node.name, 1, node.input[1])]
    return sites


def activations(sites: list[Site]) -> list[str]:
    """The tensors whose ranges calibration must provide."""
    return sorted({s.tensor for s in sites if s.axis is None})


def _weight_axis(node: onnx.NodeProto, weights: dict[str, onnx.TensorProto]) -> int | None:
    """The output-channel axis of the node's weight initializer, or None if it has none."""
    if len(node.input) < 2 or node.input[1] not in weights:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return len(weights[node.input[1]].dims) - 1  # MatMul: (..., K, N)


def insert_qdq(model: onnx.ModelProto, sites: list[Site], amax: dict[str, float], precision: str) -> int:
    """Rewire every site through a Q/DQ pair, in place; returns the number of pairs.

    `amax` holds each activation's calibrated absolute maximum; a tensor read by several sites
    shares one pair.
    """
    graph = model.graph
    missing = [t for t in activations(sites) if t not in amax]
    if missing:
        raise ToolFailed(f"calibration gave no range for {len(missing)} tensors, e.g. {missing[0]}; "
                            "the fp32 ONNX lacks their type information (export it again with pe-export onnx)")
    weights = {init.name: init for init in graph.initializer}
    pairs: dict[str, list[onnx.NodeProto]] = {}  # tensor -> its Q and DQ nodes
    rewired: dict[tuple[str, int], str] = {}
    for site in sites:
        if site.tensor not in pairs:
            pairs[site.tensor] = quantizer(graph, site, site_scale(site, amax, weights, precision), precision)
        rewired[(site.node, site.index)] = pairs[site.tensor][-1].output[0]

    placed: set[str] = set()
    nodes = []
    for node in graph.node:
        for i, name in enumerate(node.input):
            if (node.name, i) in rewired:
                if name not in placed:  # the pair goes right before its first reader
                    nodes += pairs[name]
                    placed.add(name)
                node.input[i] = rewired[(node.name, i)]
        nodes.append(node)
    graph.ClearField("node")
    graph.node.extend(nodes)
    return len(pairs)


def site_scale(site: Site, amax: dict[str, float], weights: dict[str, onnx.TensorProto], precision: str) -> np.ndarray:
    """The symmetric scale of a site: per tensor from the calibrated range for an activation, per
    output channel from the weight itself for a weight."""
    if site.axis is None:
        return np.array(max(amax[site.tensor], TINY) / QMAX[precision], dtype=np.float32)
    weight = numpy_helper.to_array(weights[site.tensor])
    other = tuple(a for a in range(weight.ndim) if a != site.axis)
    return (np.maximum(np.abs(weight).max(axis=other), TINY) / QMAX[precision]).astype(np.float32)


def dequantized(value: np.ndarray, scale: np.ndarray, axis: int | None, precision: str) -> np.ndarray:
    """DQ(Q(value)) as the ONNX operators define it (onnxruntime's arithmetic): divide by the scale,
    saturate, round half to even (fp8: to the nearest float8 e4m3fn), multiply back."""
    if axis is not None:
        scale = np.expand_dims(scale, tuple(a for a in range(value.ndim) if a != axis))
    if precision == "int8":
        return (np.clip(np.rint(value / scale), -128, 127) * scale).astype(np.float32)
    grid = np.clip(value / scale, -QMAX["fp8"], QMAX["fp8"]).astype(ml_dtypes.float8_e4m3fn)
    return (grid.astype(np.float32) * scale).astype(np.float32)


def quantizer(graph: onnx.GraphProto, site: Site, scale: np.ndarray, precision: str) -> list[onnx.NodeProto]:
    """Q and DQ nodes for one tensor (their scale and zero point added to the graph's initializers),
    named after its first reader so engine logs point at the model."""
    role = "weight" if site.axis is not None else f"input{site.index}"
    prefix = f"{site.node}/{role}_quantizer"
    zero = helper.make_tensor(f"{prefix}/zero_point", QUANT_TYPES[precision], scale.shape, np.zeros(scale.shape).ravel())
    graph.initializer.extend([numpy_helper.from_array(scale, f"{prefix}/scale"), zero])
    io = [f"{prefix}/scale", f"{prefix}/zero_point"]
    axis = {} if site.axis is None else {"axis": site.axis}
    return [
        helper.make_node("QuantizeLinear", [site.tensor, *io], [f"{prefix}/quantized"], f"{prefix}/QuantizeLinear", **axis),
        helper.make_node("DequantizeLinear", [f"{prefix}/quantized", *io], [f"{prefix}/dequantized"],
                         f"{prefix}/DequantizeLinear", **axis),
    ]
