"""Building a PE model for a variant, with checkpoint weights or deterministic random ones."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from pe_export.artifacts import Digests
from pe_export.model.checkpoint import check_keys, fit_projector, read_checkpoint, weights_digest
from pe_export.hub import checkpoint_files, resolve_checkpoint
from pe_export.model.pe import PEVisionTower
from pe_export.source import ModelSource, WeightSource
from pe_export.variants import Variant, get_variant


@dataclass(frozen=True)
class LoadedModel:
    variant: Variant
    model: PEVisionTower
    source: WeightSource


def build_model(variant: str | Variant, device: str | torch.device = "cpu") -> PEVisionTower:
    """An uninitialised model; on the meta device it costs nothing (parameter counts, shapes)."""
    with torch.device(device):
        return PEVisionTower(get_variant(variant))


def random_init_(model: PEVisionTower, seed: int) -> PEVisionTower:
    """Fill every parameter from a seeded generator, so outputs are reproducible on any machine.

    Weights get fan-in scaled normals, LayerNorm gains sit near 1, biases and LayerScale are
    small but non-zero, so a swapped or ignored tensor changes the output.
    """
    gen = torch.Generator().manual_seed(seed)
    ls = model.variant.layer_scale or 0.1
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma":
                value = ls * (1 + 0.1 * noise)
            elif param.ndim == 1 and leaf == "weight":  # LayerNorm gain
                value = 1 + 0.1 * noise
            elif param.ndim == 1 and leaf != "class_embedding":  # biases
                value = 0.02 * noise
            else:
                fan_in = param.shape[0] if name == "proj" else param[0].numel()
                value = noise * fan_in**-0.5
            param.copy_(value.to(param.dtype))
    return model


def load_model(
    variant: str | Variant,
    checkpoint: str | Path | None = None,
    *,
    random_init: bool = False,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    digests: Digests | None = None,
) -> LoadedModel:
    """The eval-mode model of a variant with its weights.

    `checkpoint` is a local file or `hf://owner/repo/file`; `None` takes the variant's hub file
    (`facebook/<name>`). `random_init` gives deterministic random weights from `seed` instead.
    A PLM variant takes its projector's width from the checkpoint (a user's own LLM width).
    Weights stored in another float type are cast to `dtype`. `digests` keeps the weights' digest (computed once per plan).
    """
    variant = get_variant(variant)
    if random_init:
        model = random_init_(build_model(variant), seed).to(dtype)
        return LoadedModel(variant, model.eval(), WeightSource(None, None, seed))
    path = resolve_checkpoint(variant, checkpoint)
    state = read_checkpoint(path)
    variant = fit_projector(variant, state)
    check_keys(variant, state, path)
    digest = (digests or Digests()).derived(checkpoint_files(path), lambda: weights_digest(state))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    model = build_model(variant, "meta")
    # assign=True adopts the loaded tensors instead of copying them into freshly allocated ones.
    model.load_state_dict(state, strict=True, assign=True)
    return LoadedModel(variant, model.eval(), WeightSource(path, digest, None))


def load_source(source: ModelSource, digests: Digests | None = None) -> LoadedModel:
    """The eval-mode fp32 model with the weights `source` names."""
    return load_model(source.variant, source.checkpoint, random_init=source.random_init, seed=source.seed,
                      digests=digests)
