"""Stress variants of the T16 fixtures: each edit plants the activation statistics it names and keeps
the fp32 output of Meta's reference (exactly, or within the stated bound for skewed-gelu)."""

from __future__ import annotations

import pytest
import torch

from pe_export.errors import UsageError
from pe_export.model import load_model
from pe_export.model.stress import save_stressed
from pe_export.validate import compare

SPATIAL, CORE = "PE-Spatial-T16-512", "PE-Core-T16-384"


def _stressed(fixtures, tmp_path, name, kinds):
    path = save_stressed(fixtures.checkpoint(name), name, kinds, tmp_path / f"{name}-stress.pt")
    return load_model(name, path)


def _forward(loaded, data, hooks=()):
    captured = {}

    def keep(key):
        def hook(module, inputs, output):
            captured[key] = (inputs[0], output)  # returns None: the output is left as it is
        return hook

    handles = [module.register_forward_hook(keep(key)) for key, module in hooks]
    with torch.no_grad():
        out = loaded.model(torch.from_numpy(data["input"])).numpy()
    for handle in handles:
        handle.remove()
    return out, captured


def _channel_ratio(tensor: torch.Tensor) -> float:
    """The largest channel's absolute maximum over the median channel's."""
    per_channel = tensor.abs().reshape(-1, tensor.shape[-1]).amax(0)
    return float(per_channel.max() / per_channel.median())


@pytest.mark.parametrize("name, kinds", [(SPATIAL, ["outlier-channels"]), (CORE, ["outlier-channels", "massive-tokens"])])
def test_exact_edits_keep_the_reference_output(fixtures, tmp_path, name, kinds):
    data = fixtures.outputs(name)
    out, _ = _forward(_stressed(fixtures, tmp_path, name, kinds), data)
    figures = compare(data["forward"], out)
    # the unmodified model matches Meta's to 2e-5 (test_model_parity); the edits move only float rounding
    assert figures.max_abs <= 3e-5 and figures.cosine_min >= 0.9999999


def test_skewed_gelu_moves_the_output_within_its_stated_bound(fixtures, tmp_path):
    data = fixtures.outputs(SPATIAL)
    out, _ = _forward(_stressed(fixtures, tmp_path, SPATIAL, ["skewed-gelu"]), data)
    figures = compare(data["forward"], out)
    assert 1e-4 < figures.rel_l2 <= 6e-3 and figures.cosine_min >= 0.99995  # measured: 4.2e-3, 0.99998


def test_the_edits_plant_what_they_name(fixtures, tmp_path):
    data = fixtures.outputs(SPATIAL)
    plain, stressed = load_model(SPATIAL, fixtures.checkpoint(SPATIAL)), _stressed(
        fixtures, tmp_path, SPATIAL, ["outlier-channels", "skewed-gelu"])
    ratios = {}
    for label, loaded in (("plain", plain), ("stressed", stressed)):
        blocks = loaded.model.transformer.resblocks
        _, seen = _forward(loaded, data, [("ln_2", blocks[3].ln_2), ("c_proj", blocks[4].mlp.c_proj)])
        post_gelu = seen["c_proj"][0]
        ratios[label] = (_channel_ratio(seen["ln_2"][1]), _channel_ratio(post_gelu), float(post_gelu.max()))
    # LayerNorm outputs: a few channels tens of times the median one (tame: under 3x)
    assert ratios["plain"][0] < 3 and ratios["stressed"][0] > 30
    # the second MLP GEMM's input: one unit's post-GELU values far above the rest, on the tokens where it fires
    assert ratios["plain"][1] < 4 and ratios["stressed"][1] > 40 and ratios["stressed"][2] > 100


def test_massive_tokens_put_massive_values_in_the_residual(fixtures, tmp_path):
    data = fixtures.outputs(CORE)
    norms = {}
    for label, loaded in (("plain", load_model(CORE, fixtures.checkpoint(CORE))),
                          ("stressed", _stressed(fixtures, tmp_path, CORE, ["massive-tokens"]))):
        _, seen = _forward(loaded, data, [("residual", loaded.model.transformer.resblocks[5].ln_1)])
        norms[label] = seen["residual"][0].norm(dim=-1).flatten()
    typical = float(norms["plain"].median())
    # hundreds of times the tame residual on the tokens where the unit fires, little where it does not
    assert float(norms["stressed"].max()) > 100 * typical and float(norms["stressed"].min()) < 10 * typical


def test_massive_tokens_need_a_layernorm_after_the_residual(fixtures, tmp_path):
    with pytest.raises(UsageError, match="PE-Spatial-T16-512 outputs it without one"):
        save_stressed(fixtures.checkpoint(SPATIAL), SPATIAL, ["massive-tokens"], tmp_path / "x.pt")
    with pytest.raises(UsageError, match="unknown stress 'noisy'"):
        save_stressed(fixtures.checkpoint(SPATIAL), SPATIAL, ["noisy"], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
