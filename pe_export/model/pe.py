"""The PE vision tower, written for export and bit-exact to Meta's reference in fp32.

Parameter names follow Meta's checkpoints so state dicts load without renaming. The RoPE
tables are fp32 buffers for the native grid (not saved in the state dict); another grid in
eager mode computes its tables on the fly.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pe_export.model.rope import rope_tables, rotary
from pe_export.variants import POOLER_HEADS, POOLER_MLP_RATIO, Variant

LN_EPS = 1e-5


class Mlp(nn.Sequential):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)


class LayerScale(nn.Module):
    def __init__(self, width: int, init: float):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((width,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Attention(nn.Module):
    """Multi-head attention with one packed in-projection, as in Meta's checkpoints.

    With rope tables it is the RoPE self-attention of the blocks; the pooler calls it with a
    separate query and no rope.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (width // heads) ** -0.5
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self._attend(q, k, v, rope)

    def cross(self, query: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        width = query.shape[-1]
        q = F.linear(query, self.in_proj_weight[:width], self.in_proj_bias[:width])
        k, v = F.linear(x, self.in_proj_weight[width:], self.in_proj_bias[width:]).chunk(2, dim=-1)
        return self._attend(q, k, v, None)

    def _attend(self, q, k, v, rope) -> torch.Tensor:
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if rope is not None:
            q, k = rotary(q, *rope), rotary(k, *rope)
        out = F.scaled_dot_product_attention(q, k, v, scale=self.scale)
        return self.out_proj(out.transpose(1, 2).flatten(2))


class Block(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, layer_scale: float | None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=LN_EPS)
        self.attn = Attention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, mlp_width)
        self.ls_1 = LayerScale(width, layer_scale) if layer_scale is not None else nn.Identity()
        self.ls_2 = LayerScale(width, layer_scale) if layer_scale is not None else nn.Identity()

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        x = x + self.ls_1(self.attn(self.ln_1(x), rope))
        return x + self.ls_2(self.mlp(self.ln_2(x)))


class Transformer(nn.Module):
    def __init__(self, variant: Variant):
        super().__init__()
        self.resblocks = nn.ModuleList(
            Block(variant.width, variant.heads, variant.mlp_width, variant.layer_scale) for _ in range(variant.layers)
        )


class AttentionPool(nn.Module):
    """A learned probe attends over all tokens; then a residual MLP on the result (no probe residual)."""

    def __init__(self, width: int):
        super().__init__()
        self.probe = nn.Parameter(torch.empty(1, 1, width))
        self.attn = Attention(width, POOLER_HEADS)
        self.layernorm = nn.LayerNorm(width, eps=LN_EPS)
        self.mlp = Mlp(width, POOLER_MLP_RATIO * width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self.probe.expand(x.shape[0], -1, -1).to(x.dtype)
        pooled = self.attn.cross(query, x)
        pooled = pooled + self.mlp(self.layernorm(pooled))
        return pooled.squeeze(1)


class Projector(nn.Module):
    """PerceptionLM's vision projector: Linear(W, D), exact GELU, Linear(D, D) on every token, then the
    2x2 mean over the row-major token grid. With `pool_first` the mean is taken before the second
    Linear, which it commutes with: the same function with a quarter of that GEMM (the export's form)."""

    def __init__(self, width: int, dim: int, pool_first: bool = True):
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(width, dim), nn.GELU(), nn.Linear(dim, dim))
        self.pool_first = pool_first

    @staticmethod
    def _pool(x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        side = int(tokens**0.5)
        grid = x.transpose(1, 2).reshape(batch, dim, side, side)
        return F.avg_pool2d(grid, 2).flatten(2).transpose(1, 2)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        first, gelu, second = self.projector
        hidden = gelu(first(tokens))
        return second(self._pool(hidden)) if self.pool_first else self._pool(second(hidden))


class PEVisionTower(nn.Module):
    """PE vision encoder. `forward` gives the variant's default output (pooled for Core, PLM's image
    features for PLM, tokens otherwise)."""

    def __init__(self, variant: Variant):
        super().__init__()
        self.variant = variant
        w = variant.width
        self.conv1 = nn.Conv2d(3, w, kernel_size=variant.patch_size, stride=variant.patch_size, bias=False)
        if variant.cls_token:
            self.class_embedding = nn.Parameter(torch.empty(w))
        self.positional_embedding = nn.Parameter(torch.empty(variant.tokens, w))
        self.ln_pre = nn.LayerNorm(w, eps=LN_EPS)
        self.transformer = Transformer(variant)
        self.ln_post = nn.LayerNorm(w, eps=LN_EPS) if variant.ln_post else nn.Identity()
        if variant.attn_pool:
            self.attn_pool = AttentionPool(w)
        if variant.proj_dim:
            self.proj = nn.Parameter(torch.empty(w, variant.proj_dim))
        if variant.projector_dim:  # named as in PLM's checkpoints: vision_projector.projector.{0,2}
            self.vision_projector = Projector(w, variant.projector_dim)
        # Tables are made on the CPU even when the module is built on the meta device, so a model
        # built empty and filled with `load_state_dict(assign=True)` is complete.
        cos, sin = rope_tables(variant.head_dim, variant.grid, variant.grid, variant.cls_token, torch.device("cpu"))
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def _rope(self, grid_h: int, grid_w: int) -> tuple[torch.Tensor, torch.Tensor]:
        if (grid_h, grid_w) == (self.variant.grid, self.variant.grid):
            return self.rope_cos, self.rope_sin
        return rope_tables(self.variant.head_dim, grid_h, grid_w, self.variant.cls_token, self.rope_cos.device)

    def _pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.positional_embedding
        if (grid_h, grid_w) == (self.variant.grid, self.variant.grid):
            return pos[None]
        n_cls = int(self.variant.cls_token)
        cls_rows, patch_rows = pos[:n_cls], pos[n_cls:]
        g = self.variant.grid
        grid = patch_rows.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
        return torch.cat([cls_rows, grid.permute(0, 2, 3, 1).reshape(grid_h * grid_w, -1)])[None]

    def forward_features(
        self, x: torch.Tensor, norm: bool = False, layer_idx: int = -1, strip_cls_token: bool = False
    ) -> torch.Tensor:
        """Tokens after block `layer_idx` (negative counts from the end), optionally ln_post'ed and cls-stripped."""
        batch, _, h, w = x.shape
        p = self.variant.patch_size
        grid_h, grid_w = h // p, w // p
        x = self.conv1(x).permute(0, 2, 3, 1).reshape(batch, grid_h * grid_w, -1)
        if self.variant.cls_token:
            x = torch.cat([self.class_embedding.view(1, 1, -1).expand(batch, -1, -1).to(x.dtype), x], dim=1)
        x = self.ln_pre(x + self._pos_embed(grid_h, grid_w))
        rope = self._rope(grid_h, grid_w)
        layers = self.variant.layers
        for block in self.transformer.resblocks[: (layers + layer_idx) % layers + 1]:
            x = block(x, rope)
        if norm:
            x = self.ln_post(x)
        if strip_cls_token and self.variant.cls_token:
            x = x[:, 1:]
        return x

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Core only: attention-pooled, projected embedding (B, proj_dim)."""
        if not self.variant.attn_pool:
            raise ValueError(f"{self.variant.name} has no attention pooler; use tokens")
        pooled = self.attn_pool(self.forward_features(x, norm=True))
        return pooled @ self.proj

    def forward_image_features(self, x: torch.Tensor) -> torch.Tensor:
        """PLM only: the last block's tokens without the class token, projected: (B, 256, D) at 448 px."""
        if not self.variant.projector_dim:
            raise ValueError(f"{self.variant.name} has no projector; use tokens")
        return self.vision_projector(self.forward_features(x, norm=True, strip_cls_token=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant.projector_dim:
            return self.forward_image_features(x)
        if self.variant.attn_pool:
            return self.forward_pooled(x)
        return self.forward_features(x, norm=True)
