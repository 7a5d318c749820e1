"""Small graph passes applied to the exported ONNX IR before it is saved."""

from __future__ import annotations

import ast

import onnx
import onnx_ir as ir
from onnx_ir.passes.common import RemoveUnusedNodesPass



def trim_attention_outputs(model: ir.Model) -> None:
    """Leave each Attention node with its one used output: TensorRT maps only that form to fused attention."""
    for node in model.graph.all_nodes():
        if node.op_type == "Attention" and node.domain == "":
            used = [i for i, value in enumerate(node.outputs) if value.uses() or value.is_graph_output()]
            if used == [0]:
                node.resize_outputs(1)


def step_down_opset(model: ir.Model, opset: int) -> None:
    """Relabel the graph to an older opset where every op it uses is unchanged since then.

    The exporter builds at opset 18 or later. Between 17 and 18 only Split changed among the ops a
    PE graph holds (its sizes moved from an input to `num_outputs`); it is rewritten, and any other
    op newer than the target is an error rather than a silent mislabel.
    """
    current = model.opset_imports.get("", opset)
    for node in model.graph.all_nodes():
        if node.domain not in ("", "ai.onnx"):
            continue
        since = onnx.defs.get_schema(node.op_type, current).since_version
        if since <= opset:
            continue
        if node.op_type == "Split":
            _split_sizes_as_input(model, node)
        else:
            raise RuntimeError(f"{node.op_type} ({node.name}) changed in opset {since}; it cannot be labelled opset {opset}")
    model.opset_imports[""] = opset


def _split_sizes_as_input(model: ir.Model, node: ir.Node) -> None:
    count = node.attributes.pop("num_outputs").as_int()
    axis = node.attributes["axis"].as_int() if "axis" in node.attributes else 0
    dim = node.inputs[0].shape[axis] if node.inputs[0].shape is not None else None
    if not isinstance(dim, int) or dim % count:
        raise RuntimeError(f"cannot give Split {node.name} explicit sizes: axis {axis} has size {dim}")
    sizes = ir.Value(name=f"{node.name}/sizes", const_value=ir.tensor([dim // count] * count, dtype=ir.DataType.INT64))
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


def name_nodes_by_module(model: ir.Model) -> None:
    """Name nodes after the module and torch op they come from (`transformer.resblocks.3.attn/rotary`).

    Meaningful names make parser errors, profiles and precision exclusions readable. The exporter's
    metadata (stack traces with local paths) is dropped so the file is the same on any machine.
    """
    nodes = list(model.graph.all_nodes())
    taken = {node.name for node in nodes}
    for node in nodes:
        scopes = _name_scopes(node.metadata_props.get("pkg.torch.onnx.name_scopes"))
        node.metadata_props.clear()
        if len(scopes) < 2:
            continue
        modules = [s for s in scopes[:-1] if s and not s.startswith("_")]
        name = base = f"{modules[-1].removeprefix('model.') if modules else 'model'}/{scopes[-1]}"
        count = 1
        while name in taken:  # one torch op may become several ONNX nodes
            name, count = f"{base}#{count}", count + 1
        taken.discard(node.name)
        taken.add(name)
        node.name = name


def _name_scopes(text: str | None) -> list[str]:
    if not text:
        return []
    try:
        scopes = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return []
    return [str(s) for s in scopes] if isinstance(scopes, list) else []


def finish(model: ir.Model, opset: int) -> None:
    """The passes every export gets, then the step down to the target opset where it is below the exporter's."""
    trim_attention_outputs(model)
    share_position_ids(model)
    name_nodes_by_module(model)
    if model.opset_imports.get("", opset) > opset:
        step_down_opset(model, opset)
