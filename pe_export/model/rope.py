"""2D rotary position embedding of PE, as fixed fp32 tables and one custom op.

The rotation is a `torch.library` custom op so that the ONNX exporter sees one node per q and
per k and can lower it for the target runtime (one `RotaryEmbedding` or plain element-wise ops).
"""

from __future__ import annotations

import torch

THETA = 10000.0


def rope_angles(head_dim: int, grid_h: int, grid_w: int, cls_token: bool, device: torch.device) -> torch.Tensor:
    """Angles of every second channel, shape (tokens, head_dim // 2), in fp32.

    Channel pairs 0..D/4-1 turn with the column, the rest with the row. With a class token the
    patch positions start at 1 and the class token gets angle 0 (an identity rotation).
    """
    quarter = head_dim // 4
    # Same expression as the reference so the fp32 frequencies match bit for bit.
    freqs = 1.0 / (THETA ** (torch.arange(0, head_dim // 2, 2, device=device)[:quarter].float() / (head_dim // 2)))
    offset = 1 if cls_token else 0
    ys = (torch.arange(grid_h, device=device) + offset).float()
    xs = (torch.arange(grid_w, device=device) + offset).float()
    ang_x = (xs[:, None] * freqs)[None, :, :].expand(grid_h, grid_w, quarter)
    ang_y = (ys[:, None] * freqs)[:, None, :].expand(grid_h, grid_w, quarter)
    angles = torch.cat([ang_x, ang_y], dim=-1).reshape(grid_h * grid_w, 2 * quarter)
    if cls_token:
        angles = torch.cat([angles.new_zeros(1, 2 * quarter), angles], dim=0)
    return angles


def rope_tables(
    head_dim: int, grid_h: int, grid_w: int, cls_token: bool, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin caches of shape (tokens, head_dim // 2), fp32: ONNX RotaryEmbedding's layout."""
    angles = rope_angles(head_dim, grid_h, grid_w, cls_token, device)
    return angles.cos(), angles.sin()


@torch.library.custom_op("pe_export::rotary", mutates_args=())
def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved channel pairs (2m, 2m+1) of x (B, H, S, D) by the angles of (S, D/2) tables.

    Computed in fp32 (or wider) and cast back to x's dtype, as the reference does.
    """
    pairs = x.to(torch.promote_types(x.dtype, torch.float32)).unflatten(-1, (-1, 2))
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, odd * cos + even * sin), dim=-1)
    return rotated.flatten(-2).to(x.dtype)


@rotary.register_fake
def _(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(x)
