"""Stress variants of a PE state dict: the activation statistics of real CLIP-style towers, built
into any weights (the T16 fixtures, seeded ones) by edits that keep the fp32 function.

Random weights give tame activations, so INT8 looks better on them than on real towers. Each edit
here reproduces one thing real towers do and says how closely it keeps the function:

- `outlier-channels` (exact): a few LayerNorm output channels `factor` times larger, the next
  Linear's input columns `factor` times smaller. `y W = (y F)(W / F)`, so only float rounding moves.
- `massive-tokens` (exact where every reader of the residual stream is a LayerNorm, i.e. variants
  with ln_post): one MLP unit per chosen block writes `offset * GELU(z)` into every channel of the
  residual, so the tokens where it fires carry values hundreds of times the rest from there on
  (about half the tokens with random weights, whose units are not as sparse as trained ones). A
  LayerNorm subtracts each token's mean, which removes an offset equal on all channels exactly, so
  no activation a Q/DQ pair reads changes; what changes is the c_proj weight that writes the
  values: its column for that unit holds `offset`, a per-element weight outlier (what real towers
  have where they write massive activations). Variants without ln_post output the residual
  itself and are refused.
- `skewed-gelu` (approximate): a few MLP units per chosen block get `factor` times their c_fc row
  and bias and `1 / factor` of their c_proj column, so the second GEMM reads post-GELU values up
  to `factor` times larger on the few tokens where the unit fires. GELU is not positively
  homogeneous (`GELU(F z) / F - GELU(z) = z (Phi(F z) - Phi(z))`), and an MLP with GELU has no
  exact reparametrization but permuting its units, so this one moves the output: on the T16
  fixtures by a relative L2 of about 3e-3 (token cosine above 0.99999), a hundredth of what it
  does to per-tensor INT8.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from pe_export.errors import UsageError
from pe_export.model.checkpoint import read_checkpoint
from pe_export.variants import Variant, get_variant

StateDict = dict[str, torch.Tensor]
BLOCK = "transformer.resblocks.{}."


def outlier_channels(state: StateDict, variant: Variant, gen: torch.Generator, channels: int = 4,
                     factor: float = 50.0) -> None:
    """Scale `channels` random channels of every block's ln_1 and ln_2 by `factor`, and the
    matching input columns of the Linear each one feeds by 1 / `factor`."""
    for i in range(variant.layers):
        block = BLOCK.format(i)
        for norm, linear in (("ln_1", "attn.in_proj_weight"), ("ln_2", "mlp.c_fc.weight")):
            chosen = torch.randperm(variant.width, generator=gen)[:channels]
            state[f"{block}{norm}.weight"][chosen] *= factor
            state[f"{block}{norm}.bias"][chosen] *= factor
            state[f"{block}{linear}"][:, chosen] /= factor


def massive_tokens(state: StateDict, variant: Variant, gen: torch.Generator, blocks: tuple[int, ...] = (1,),
                   offset: float = 100.0) -> None:
    """Let one random MLP unit in each of `blocks` add `offset * GELU(z)` to all channels of the residual."""
    if not variant.ln_post:
        raise UsageError(f"massive-tokens keeps the function only where a LayerNorm reads the last residual; "
                         f"{variant.name} outputs it without one")
    for i in blocks:
        block = BLOCK.format(i % variant.layers)
        unit = int(torch.randint(variant.mlp_width, (1,), generator=gen))
        # a LayerScale after the MLP multiplies each channel: divide it out so the offset stays equal on all
        scale = state.get(f"{block}ls_2.gamma", torch.ones(variant.width))
        state[f"{block}mlp.c_proj.weight"][:, unit] += offset / scale


def skewed_gelu(state: StateDict, variant: Variant, gen: torch.Generator, blocks: tuple[int, ...] = (4, 8),
                factor: float = 100.0) -> None:
    """Make one random MLP unit in each of `blocks` fire `factor` times larger before and after its
    GELU, and take `factor` out of its c_proj column (approximate: see the module's docstring)."""
    for i in blocks:
        block = BLOCK.format(i % variant.layers)
        unit = int(torch.randint(variant.mlp_width, (1,), generator=gen))
        state[f"{block}mlp.c_fc.weight"][unit] *= factor
        state[f"{block}mlp.c_fc.bias"][unit] *= factor
        state[f"{block}mlp.c_proj.weight"][:, unit] /= factor


STRESSES: dict[str, Callable[[StateDict, Variant, torch.Generator], None]] = {
    "outlier-channels": outlier_channels,
    "massive-tokens": massive_tokens,
    "skewed-gelu": skewed_gelu,
}
EXACT = ("outlier-channels", "massive-tokens")  # the edits that keep fp32 up to rounding


def stressed(state: StateDict, variant: Variant, kinds: list[str], seed: int = 0) -> StateDict:
    """A copy of `state` with the named edits applied in order (seeded, so the same on every machine)."""
    unknown = [k for k in kinds if k not in STRESSES]
    if unknown:
        raise UsageError(f"unknown stress {unknown[0]!r}; choose from {', '.join(STRESSES)}")
    edited = {name: tensor.clone() for name, tensor in state.items()}
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for kind in kinds:
            STRESSES[kind](edited, variant, gen)
    return edited


def save_stressed(checkpoint: Path, variant: str | Variant, kinds: list[str], target: Path, seed: int = 0) -> Path:
    """Write a stress variant of a checkpoint as a Meta-style `.pt` that --checkpoint loads."""
    chosen = get_variant(variant)
    torch.save(stressed(read_checkpoint(Path(checkpoint)), chosen, kinds, seed), target)
    return target
