"""ONNX translations of RoPE and attention, one pair per lowering.

`fused` keeps each as one node the runtime maps to a fused kernel: `RotaryEmbedding` and
`Attention` (opset 23). `decomposed` spells them in element-wise ops and MatMul/Softmax valid at
opset 17, the pattern TensorRT 10.x fuses by itself. Neither emits Sin, Cos, If or Loop: the
RoPE angles live in constant fp32 tables.
"""

from __future__ import annotations

from typing import Callable

import torch
from onnxscript import opset17 as op17
from onnxscript import opset23 as op23

import pe_export.model.rope  # noqa: F401 - registers torch.ops.pe_export.rotary
from pe_export.onnx.targets import Lowering


def rotary_fused(x, cos, sin):
    """One RotaryEmbedding (interleaved pairs, full rotary dim) over (S, D/2) caches.

    With 2D caches the op needs position ids of shape (B, S): arange(S) expanded to the batch.
    """
    seq = op23.Shape(x, start=2, end=3)
    batch = op23.Shape(x, start=0, end=1)
    positions = op23.Range(op23.Constant(value_int=0), op23.Squeeze(seq), op23.Constant(value_int=1))
    position_ids = op23.Expand(op23.Unsqueeze(positions, op23.Constant(value_ints=[0])), op23.Concat(batch, seq, axis=0))
    return op23.RotaryEmbedding(x, cos, sin, position_ids, interleaved=1)


def rotary_decomposed(x, cos, sin):
    """The same rotation in plain ops: pairs (2m, 2m+1) turned by the (S, D/2) tables."""
    axes = op17.Constant(value_ints=[-1])
    start0, start1 = op17.Constant(value_ints=[0]), op17.Constant(value_ints=[1])
    end, step = op17.Constant(value_ints=[2**62]), op17.Constant(value_ints=[2])
    even = op17.Slice(x, start0, end, axes, step)
    odd = op17.Slice(x, start1, end, axes, step)
    out_even = op17.Sub(op17.Mul(even, cos), op17.Mul(odd, sin))
    out_odd = op17.Add(op17.Mul(odd, cos), op17.Mul(even, sin))
    pairs = op17.Concat(op17.Unsqueeze(out_even, axes), op17.Unsqueeze(out_odd, axes), axis=-1)
    return op17.Reshape(pairs, op17.Constant(value_ints=[0, 0, 0, -1]))


def attention_fused(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                    scale: float | None = None, enable_gqa: bool = False):
    """One opset-23 Attention with a single output (B, H, S, D)."""
    _refuse_unsupported(attn_mask, dropout_p, is_causal, enable_gqa)
    # The tracer gives the node all four schema outputs; `trim_attention_outputs` drops the unused three.
    out, _, _, _ = op23.Attention(query, key, value, scale=_scale(query, scale))
    return out


def attention_decomposed(query, key, value, attn_mask=None, dropout_p: float = 0.0, is_causal: bool = False,
                         scale: float | None = None, enable_gqa: bool = False):
    """softmax((q * scale) @ k^T) @ v, with q pre-scaled: the pattern TensorRT fuses into one kernel."""
    _refuse_unsupported(attn_mask, dropout_p, is_causal, enable_gqa)
    scaled = op17.Mul(query, op17.Constant(value_float=_scale(query, scale)))
    scores = op17.MatMul(scaled, op17.Transpose(key, perm=[0, 1, 3, 2]))
    return op17.MatMul(op17.Softmax(scores, axis=-1), value)


def _scale(query, scale: float | None) -> float:
    return scale if scale is not None else query.shape[-1] ** -0.5


def _refuse_unsupported(attn_mask, dropout_p, is_causal, enable_gqa) -> None:
    # PE attention is unmasked, bidirectional and full-headed; anything else is a bug upstream.
    if attn_mask is not None or dropout_p or is_causal or enable_gqa:
        raise RuntimeError("PE attention has no mask, dropout, causal mode or grouped heads; "
                            "this model is not one pe-export can lower")


def translation_table(rope: Lowering, attention: Lowering) -> dict[Callable, Callable]:
    """The exporter's custom translations for the chosen lowerings."""
    return {
        torch.ops.pe_export.rotary.default: rotary_fused if rope == "fused" else rotary_decomposed,
        torch.ops.aten.scaled_dot_product_attention.default: (
            attention_fused if attention == "fused" else attention_decomposed
        ),
    }

