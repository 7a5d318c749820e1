"""Small graph passes applied to the exported ONNX IR before it is saved."""

from __future__ import annotations

import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass


def trim_attention_outputs(model: ir.Model) -> None:
    """Leave each Attention node with its one used output: TensorRT maps only that form to fused attention."""
    for node in model.graph.all_nodes():
        if node.op_type == "Attention" and node.domain == "":
            used = [i for i, value in enumerate(node.outputs) if value.uses() or value.is_graph_output()]
            if used == [0]:
                node.resize_outputs(1)


def split_sizes_as_input(model: ir.Model) -> None:
    """Below opset 18, Split takes its sizes as an input; the version converter leaves `num_outputs` behind."""
    if model.opset_imports.get("", 0) >= 18:
        return
    for node in model.graph.all_nodes():
        if node.op_type != "Split" or node.domain != "" or "num_outputs" not in node.attributes:
            continue
        count = node.attributes.pop("num_outputs").as_int()
        axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
        dim = node.inputs[0].shape[axis] if node.inputs[0].shape is not None else None
        if not isinstance(dim, int) or dim % count:
            raise ValueError(f"cannot give Split {node.name} explicit sizes: axis {axis} has size {dim}")
        sizes = ir.Value(name=f"{node.name}_sizes", const_value=ir.tensor([dim // count] * count, dtype=ir.DataType.INT64))
        sizes.shape, sizes.type = ir.Shape([count]), ir.TensorType(ir.DataType.INT64)
        model.graph.register_initializer(sizes)
        node.resize_inputs(2)
        node.replace_input_with(1, sizes)


def share_position_ids(model: ir.Model) -> None:
    """One position-id tensor for every RotaryEmbedding: all rotate (B, S) tokens of the same grid."""
    rotaries = [
        node for node in model.graph.all_nodes()
        if node.op_type == "RotaryEmbedding" and node.domain == "" and len(node.inputs) > 3
    ]
    if not rotaries:
        return
    shared = rotaries[0].inputs[3]
    for node in rotaries[1:]:
        node.replace_input_with(3, shared)
    RemoveUnusedNodesPass()(model)


def apply_all(model: ir.Model) -> None:
    trim_attention_outputs(model)
    split_sizes_as_input(model)
    share_position_ids(model)
