"""One export-friendly form of an output head for the edge runtimes (ExecuTorch, LiteRT), the same
function as the reference at fp32.

`torch.export` consumers lower op by op, and whatever their CPU delegate (XNNPACK) cannot take runs
in a slow portable kernel and cuts the graph into pieces. The reference form has four such ops, each
rewritten here: LayerNorm (XNNPACK has none) as a mean over a 4-D view (its global average pooling),
`scaled_dot_product_attention` (its decomposition masks fully-masked rows with where/any) as two
matmuls and a softmax, the RoPE channel pairs (a 5-D view and strided selects) as a multiply by a
fixed signed pair-swap matrix, and the packed in-projection (split after the GEMM) as separate q/k/v
weights. The attention pooler's query depends on its learned probe only, so it is computed once.
No op is above 4-D. The weights are the model's own tensors, but for the split q/k/v (copies).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pe_export.model.head import OutputHead
from pe_export.model.pe import AttentionPool, Attention, Block


class EdgeLayerNorm(nn.Module):
    """LayerNorm over the last dim as XNNPACK runs it: means over the two inner dims of a 4-D view."""

    def __init__(self, norm: nn.LayerNorm):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x4 = x.reshape(*x.shape, 1)  # (B, N, W, 1); squeeze and unsqueeze have no XNNPACK kernel, reshape has
        centered = x4 - x4.mean((2, 3), keepdim=True)
        variance = (centered * centered).mean((2, 3), keepdim=True)
        normed = (centered * torch.rsqrt(variance + self.norm.eps)).reshape(x.shape)
        return normed * self.norm.weight + self.norm.bias


def pair_swap(head_dim: int) -> torch.Tensor:
    """The matrix R with (x @ R)[2m] = -x[2m+1] and (x @ R)[2m+1] = x[2m]: RoPE's rotation partner."""
    swap = torch.zeros(head_dim, head_dim)
    even = torch.arange(0, head_dim, 2)
    swap[even + 1, even] = -1.0
    swap[even, even + 1] = 1.0
    return swap


class EdgeRope(nn.Module):
    """The rotation of interleaved channel pairs as x * cos + (x @ R) * sin, with tables per channel."""

    def __init__(self, cos: torch.Tensor, sin: torch.Tensor):
        super().__init__()
        self.register_buffer("cos", cos.repeat_interleave(2, dim=-1), persistent=False)  # (S, D)
        self.register_buffer("sin", sin.repeat_interleave(2, dim=-1), persistent=False)
        self.register_buffer("swap", pair_swap(cos.shape[-1] * 2).T.contiguous(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.cos + F.linear(x, self.swap) * self.sin


class EdgeAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections; `query`: a fixed query (the pooler's)."""

    def __init__(self, attention: Attention, query: torch.Tensor | None = None):
        super().__init__()
        self.heads, self.scale, self.out_proj = attention.heads, attention.scale, attention.out_proj
        weight, bias = attention.in_proj_weight.detach(), attention.in_proj_bias.detach()
        names = ("k", "v") if query is not None else ("q", "k", "v")
        for name, w, b in zip(("q", "k", "v"), weight.chunk(3), bias.chunk(3)):
            # copies, not views: ExecuTorch 1.5 serializes constants that are views into one storage at
            # the storage's start, so every view after the first would read the wrong weights
            if name in names:
                self.register_buffer(f"{name}_weight", w.clone(), persistent=False)
                self.register_buffer(f"{name}_bias", b.clone(), persistent=False)
        if query is not None:  # (heads, 1, head_dim), scaled: the probe's projection, computed once
            q = F.linear(query.detach(), weight[: weight.shape[1]], bias[: weight.shape[1]])
            self.register_buffer("query", self._heads(q) * self.scale, persistent=False)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N, W) to (B * heads, N, head_dim): attention as 3-D batched matmuls."""
        batch, tokens, width = x.shape
        split = x.reshape(batch, tokens, self.heads, width // self.heads).transpose(1, 2)
        return split.reshape(batch * self.heads, tokens, width // self.heads)

    def forward(self, x: torch.Tensor, rope: EdgeRope | None = None) -> torch.Tensor:
        batch = x.shape[0]
        k = self._heads(F.linear(x, self.k_weight, self.k_bias))
        v = self._heads(F.linear(x, self.v_weight, self.v_bias))
        if hasattr(self, "query"):
            q = batched(self.query, batch)
        else:
            q = self._heads(F.linear(x, self.q_weight, self.q_bias))
            if rope is not None:
                q, k = rope(q), rope(k)
            q = q * self.scale
        weights = torch.softmax(torch.bmm(q, k.transpose(1, 2)), dim=-1)
        out = torch.bmm(weights, v)  # (B * heads, N, head_dim)
        tokens, head_dim = out.shape[1], out.shape[2]
        out = out.reshape(batch, self.heads, tokens, head_dim).transpose(1, 2)
        return self.out_proj(out.reshape(batch, tokens, self.heads * head_dim))


def batched(x: torch.Tensor, batch: int) -> torch.Tensor:
    """A batch-1 constant for a batch of `batch`: itself for one image (expand has no XNNPACK kernel, and
    an edge program's batch is fixed when it is traced)."""
    return x if batch == 1 else torch.cat([x] * batch)


class EdgeBlock(nn.Module):
    def __init__(self, block: Block):
        super().__init__()
        self.ln_1, self.ln_2 = EdgeLayerNorm(block.ln_1), EdgeLayerNorm(block.ln_2)
        self.attn, self.mlp, self.ls_1, self.ls_2 = EdgeAttention(block.attn), block.mlp, block.ls_1, block.ls_2

    def forward(self, x: torch.Tensor, rope: EdgeRope) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), rope))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class EdgePool(nn.Module):
    def __init__(self, pool: AttentionPool):
        super().__init__()
        self.attn = EdgeAttention(pool.attn, query=pool.probe)
        self.layernorm, self.mlp = EdgeLayerNorm(pool.layernorm), pool.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.attn(x)
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled.reshape(pooled.shape[0], pooled.shape[2])


class EdgeHead(nn.Module):
    """An output head in the export-friendly form, at the variant's native size only. It holds just the
    parts the output uses, so an export carries no unused weights."""

    def __init__(self, head: OutputHead):
        super().__init__()
        model, variant = head.model, head.model.variant
        self.output, self.norm, self.strip_cls, self.cls_token = head.output, head.norm, head.strip_cls, variant.cls_token
        self.conv1 = model.conv1
        if variant.cls_token:
            self.register_buffer("class_embedding", model.class_embedding.detach().view(1, 1, -1), persistent=False)
        self.register_buffer("positional_embedding", model.positional_embedding.detach(), persistent=False)
        self.ln_pre = EdgeLayerNorm(model.ln_pre)
        self.rope = EdgeRope(model.rope_cos, model.rope_sin)
        kept = model.transformer.resblocks[: (variant.layers + head.layer) % variant.layers + 1]
        self.blocks = nn.ModuleList(EdgeBlock(block) for block in kept)
        self.ln_post = EdgeLayerNorm(model.ln_post) if isinstance(model.ln_post, nn.LayerNorm) else nn.Identity()
        if head.output == "pooled":
            self.pool = EdgePool(model.attn_pool)
            self.register_buffer("proj", model.proj.detach(), persistent=False)
        if head.output == "image_features":
            self.vision_projector = model.vision_projector

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values).flatten(2).transpose(1, 2)
        if self.cls_token:
            x = torch.cat([batched(self.class_embedding, x.shape[0]), x], dim=1)
        x = self.ln_pre(x + self.positional_embedding)
        for block in self.blocks:
            x = block(x, self.rope)
        if self.norm or self.output != "tokens":
            x = self.ln_post(x)
        if self.output == "pooled":
            return self.pool(x) @ self.proj
        if self.output == "image_features" or self.strip_cls:
            x = x[:, int(self.cls_token):]
        return self.vision_projector(x) if self.output == "image_features" else x
