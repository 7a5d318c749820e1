"""The export-friendly tower computes the reference model's function at fp32, in ops of at most 4-D."""

from __future__ import annotations

import pytest
import torch

from pe_export.model import load_model
from pe_export.model.edge import EdgeHead, EdgeRope, pair_swap
from pe_export.model.head import OutputHead
from pe_export.model.rope import rope_tables, rotary


def _max_abs_and_cosine(reference: torch.Tensor, candidate: torch.Tensor) -> tuple[float, float]:
    cosine = torch.nn.functional.cosine_similarity(reference.flatten(1), candidate.flatten(1)).min()
    return (reference - candidate).abs().max().item(), cosine.item()


def test_the_pair_swap_is_ropes_rotation_partner():
    x = torch.arange(8.0)[None]
    assert (x @ pair_swap(8)).tolist() == [[-1.0, 0.0, -3.0, 2.0, -5.0, 4.0, -7.0, 6.0]]
    cos, sin = rope_tables(64, 4, 4, True, torch.device("cpu"))
    q = torch.randn(2, 3, 17, 64)
    assert torch.equal(EdgeRope(cos, sin)(q.reshape(6, 17, 64)).reshape(q.shape), rotary(q, cos, sin))


@pytest.mark.parametrize("name, options", [
    ("PE-Core-T16-384", {"output": "pooled"}),
    ("PE-Core-T16-384", {"output": "tokens", "layer": -3, "strip_cls": True}),
    ("PE-Spatial-T16-512", {"output": "tokens"}),
])
def test_the_edge_form_equals_the_reference_at_fp32(fixtures, name, options):
    head = OutputHead(load_model(name, fixtures.checkpoint(name)).model, **options).eval()
    size = head.model.variant.image_size
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference, edge = head(x), EdgeHead(head).eval()(x)
    max_abs, cosine = _max_abs_and_cosine(reference, edge)
    assert edge.shape == reference.shape and max_abs < 2e-5 and cosine > 0.9999999


def test_plm_image_features_in_the_edge_form(plm_t16):
    from pe_export.model import build_model, random_init_

    model = build_model(plm_t16)
    random_init_(model, 0)
    head = OutputHead(model.eval(), "image_features").eval()
    x = torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        max_abs, cosine = _max_abs_and_cosine(head(x), EdgeHead(head).eval()(x))
    assert max_abs < 2e-5 and cosine > 0.9999999


def test_the_exported_edge_graph_is_at_most_4d_and_has_no_fused_ops(fixtures):
    """What XNNPACK cannot take stays out of the graph: LayerNorm, fused attention, 5-D views."""
    name = "PE-Core-T16-384"
    head = OutputHead(load_model(name, fixtures.checkpoint(name)).model, "pooled").eval()
    program = torch.export.export(EdgeHead(head).eval(), (torch.zeros(1, 3, 384, 384),))
    ops = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    ranks = {node.meta["val"].dim() for node in program.graph.nodes if isinstance(node.meta.get("val"), torch.Tensor)}
    assert max(ranks) == 4
    assert not {op for op in ops if "layer_norm" in op or "scaled_dot_product" in op or "rotary" in op or "split" in op}
