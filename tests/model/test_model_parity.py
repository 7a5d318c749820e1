"""The model against dumps of Meta's reference code (../shared/fixtures)."""

import pytest
import torch

from pe_export.model import load_model

TOLERANCE = 2e-5


def _outputs(model, data, dtype):
    x = torch.from_numpy(data["input"]).to(dtype)
    extra = torch.from_numpy(data["input_extra"]).to(dtype)
    with torch.no_grad():
        return {
            "forward": model(x),
            "features": model.forward_features(x),
            "features_norm_strip": model.forward_features(x, norm=True, strip_cls_token=True),
            "features_layer-2": model.forward_features(x, layer_idx=-2),
            "forward_extra": model(extra),
            "features_extra": model.forward_features(extra),
        }


@pytest.mark.parametrize("name", ["PE-Core-T16-384", "PE-Spatial-T16-512"])
def test_fp32_matches_reference_on_every_key(fixtures, name):
    data = fixtures.outputs(name)
    model = load_model(name, fixtures.checkpoint(name)).model
    outputs = _outputs(model, data, torch.float32)
    reference_keys = {k for k in data if not k.startswith("input") and not k.endswith("_f64")}
    assert reference_keys == set(outputs)
    for key, out in outputs.items():
        ref = torch.from_numpy(data[key])
        assert out.shape == ref.shape, key
        assert (out - ref).abs().max().item() <= TOLERANCE, key


def test_fp64_matches_reference_fp64(fixtures):
    """In fp64 the only error left is the fp32 RoPE tables (by design): 100x below the fp32 bound."""
    name = "PE-Core-T16-384"
    data = fixtures.outputs(name)
    model = load_model(name, fixtures.checkpoint(name), dtype=torch.float64).model
    for key, out in _outputs(model, data, torch.float64).items():
        ref = torch.from_numpy(data[f"{key}_f64"])
        assert (out - ref).abs().max().item() <= 1e-7, key


def test_layer_idx_counts_blocks_from_either_end(fixtures):
    name = "PE-Spatial-T16-512"
    data = fixtures.outputs(name)
    model = load_model(name, fixtures.checkpoint(name)).model
    x = torch.from_numpy(data["input"])
    with torch.no_grad():
        assert torch.equal(model.forward_features(x, layer_idx=10), model.forward_features(x, layer_idx=-2))
        assert torch.equal(model.forward_features(x, layer_idx=11), model.forward_features(x))


def test_pooled_output_is_core_only():
    model = load_model("PE-Spatial-T16-512", random_init=True).model
    with pytest.raises(ValueError, match="no attention pooler"):
        model.forward_pooled(torch.zeros(1, 3, 512, 512))


def test_batch_rows_are_independent(fixtures):
    name = "PE-Core-T16-384"
    data = fixtures.outputs(name)
    model = load_model(name, fixtures.checkpoint(name)).model
    x = torch.from_numpy(data["input"])
    with torch.no_grad():
        batch = model(torch.cat([torch.zeros_like(x), x, x.flip(-1)]))
    assert (batch[1] - torch.from_numpy(data["forward"])[0]).abs().max().item() <= TOLERANCE


def test_random_init_is_deterministic_and_seeded():
    a = load_model("PE-Core-T16-384", random_init=True, seed=3).model.state_dict()
    b = load_model("PE-Core-T16-384", random_init=True, seed=3).model.state_dict()
    c = load_model("PE-Core-T16-384", random_init=True, seed=4).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    # every tensor non-trivial, so an ignored or swapped weight shows up
    assert all(v.std() > 0 for v in a.values() if v.numel() > 1)
