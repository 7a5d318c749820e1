"""Checkpoint formats users actually have, and every way a file can be wrong."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pe_export.errors import CheckpointError
from pe_export.model import load_model
from pe_export.model.checkpoint import read_checkpoint
from pe_export.validate import compare

CORE = "PE-Core-T16-384"

# Meta -> timm names, written out independently of the loader's own table (PE_SPEC.md).
TIMM_RULES = [
    (r"^conv1\.", "patch_embed.proj."),
    (r"^ln_pre\.", "norm_pre."),
    (r"^ln_post\.", "norm."),
    (r"^transformer\.resblocks\.", "blocks."),
    (r"\.ln_1\.", ".norm1."),
    (r"\.ln_2\.", ".norm2."),
    (r"^(blocks\.\d+)\.attn\.in_proj_(weight|bias)$", r"\1.attn.qkv.\2"),
    (r"^(blocks\.\d+)\.attn\.out_proj\.", r"\1.attn.proj."),
    (r"\.ls_1\.gamma$", ".gamma_1"),
    (r"\.ls_2\.gamma$", ".gamma_2"),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."),
    (r"\.mlp\.c_proj\.", ".mlp.fc2."),
    (r"^attn_pool\.probe$", "attn_pool.latent"),
    (r"^attn_pool\.attn\.out_proj\.", "attn_pool.proj."),
    (r"^attn_pool\.layernorm\.", "attn_pool.norm."),
]


def to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    width = state["class_embedding"].shape[0]
    for key, value in state.items():
        if key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "positional_embedding":
            out["pos_embed"] = value[None]
        elif key == "proj":
            out["head.weight"] = value.t().contiguous()
            out["head.bias"] = torch.zeros(value.shape[1])
        elif key.startswith("attn_pool.attn.in_proj_"):
            kind = key.rsplit("_", 1)[-1]
            out[f"attn_pool.q.{kind}"] = value[:width].clone()
            out[f"attn_pool.kv.{kind}"] = value[width:].clone()
        else:
            for pattern, repl in TIMM_RULES:
                key = re.sub(pattern, repl, key)
            out[key] = value.contiguous()
    return out


@pytest.fixture(scope="module")
def meta_state(fixtures):
    return torch.load(fixtures.checkpoint(CORE), weights_only=True)


@pytest.fixture(scope="module")
def core_input(fixtures):
    return torch.from_numpy(fixtures.outputs(CORE)["input"])


@pytest.fixture(scope="module")
def core_reference(fixtures):
    return torch.from_numpy(fixtures.outputs(CORE)["forward"])


def _forward(path, x, **kwargs):
    with torch.no_grad():
        return load_model(CORE, path, **kwargs).model(x)


def _clip_file(state):
    text = {"transformer.resblocks.0.attn.in_proj_weight": torch.randn(8, 8), "token_embedding.weight": torch.randn(4, 8),
            "logit_scale": torch.tensor(1.0)}
    return {**{f"visual.{k}": v for k, v in state.items()}, **text}


@pytest.mark.parametrize(
    "layout, suffix",
    [
        ("bare", ".pt"),
        ("clip", ".pt"),
        ("module", ".pt"),
        ("state_dict", ".pt"),
        ("weights", ".pth"),
        ("timm", ".safetensors"),
        ("timm", ".bin"),
        ("timm", ".pth"),
    ],
)
def test_layouts_load_to_the_same_outputs(tmp_path, meta_state, core_input, core_reference, layout, suffix):
    state = {
        "bare": lambda s: s,
        "clip": _clip_file,
        "module": lambda s: {f"module.{k}": v for k, v in s.items()},
        "state_dict": lambda s: {"state_dict": s, "epoch": 3},
        "weights": lambda s: {"weights": {f"module.{k}": v for k, v in s.items()}},
        "timm": to_timm,
    }[layout](meta_state)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, path)
    else:
        torch.save(state, path)
    out = _forward(path, core_input)
    assert (out - core_reference).abs().max().item() <= 2e-5


def test_timm_keys_map_back_exactly(tmp_path, meta_state):
    path = tmp_path / "timm.safetensors"
    save_file(to_timm(meta_state), path)
    loaded = read_checkpoint(path)
    assert loaded.keys() == meta_state.keys()
    assert all(torch.equal(loaded[k], meta_state[k]) for k in meta_state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_stored_weights_are_cast_to_the_model_dtype(tmp_path, meta_state, core_input, core_reference, dtype):
    path = tmp_path / "half.pt"
    torch.save({k: v.to(dtype) for k, v in meta_state.items()}, path)
    model = load_model(CORE, path).model
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        out = model(core_input)
    cos = compare(core_reference.numpy(), out.numpy()).cosine_min
    assert cos > (0.999 if dtype == torch.float16 else 0.99)
    assert not torch.equal(out, core_reference)


def test_the_weights_digest_is_of_the_tensors_not_the_file(fixtures, tmp_path, meta_state):
    """Meta's .pt and timm's safetensors of the same weights have one digest; one changed value, another."""
    path = fixtures.checkpoint(CORE)
    source = load_model(CORE, path).source
    assert source.checkpoint == path and source.seed is None
    timm = tmp_path / "timm.safetensors"
    save_file(to_timm(meta_state), timm)
    assert load_model(CORE, timm).source.sha256 == source.sha256
    nudged = dict(meta_state, **{"ln_pre.bias": meta_state["ln_pre.bias"].clone()})
    nudged["ln_pre.bias"][0] = torch.nextafter(nudged["ln_pre.bias"][0], torch.tensor(1.0))
    torch.save(nudged, tmp_path / "nudged.pt")
    assert load_model(CORE, tmp_path / "nudged.pt").source.sha256 != source.sha256


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": _Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match="refused to load .*weights_only"):
        load_model(CORE, path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "cannot read"),
        (b"this is not a checkpoint at all", "cannot read"),
        (b"PK\x03\x04 truncated zip", "cannot read"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_model(CORE, path)


def test_truncated_checkpoint(fixtures, tmp_path):
    path = tmp_path / "cut.pt"
    data = fixtures.checkpoint(CORE).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read"):
        load_model(CORE, path)


def test_corrupt_safetensors(tmp_path):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(CheckpointError, match="cannot read .* as safetensors"):
        load_model(CORE, path)


def test_pickle_without_tensors(tmp_path):
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds no state dict"):
        load_model(CORE, path)


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_model(CORE, tmp_path / "nope.pt")


def test_checkpoint_of_another_variant_is_named(fixtures):
    with pytest.raises(CheckpointError, match=r"is a PE-Core-T16-384 checkpoint, not PE-Spatial-T16-512.*--variant PE-Core-T16-384"):
        load_model("PE-Spatial-T16-512", fixtures.checkpoint(CORE))


def test_key_problems_are_listed_with_counts(tmp_path, meta_state):
    state = dict(meta_state)
    for key in [k for k in state if k.startswith("transformer.resblocks.3.")]:
        del state[key]
    state["extra.weight"] = torch.zeros(2)
    state["proj"] = torch.zeros(192, 256)
    path = tmp_path / "damaged.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_model(CORE, path)
    message = str(info.value)
    assert "does not fit PE-Core-T16-384" in message
    assert "missing: transformer.resblocks.3." in message and "and 9 more" in message  # 12 tensors per block
    assert "unexpected: extra.weight" in message
    assert "mis-shaped: proj [192, 256] (expected [192, 512])" in message


def _populate_hub_cache(cache: Path, repo: str, filename: str, source: Path) -> None:
    """The huggingface_hub cache layout, as a download leaves it."""
    commit = "0" * 40
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (snapshot / filename).write_bytes(source.read_bytes())


def test_default_hub_file_is_taken_from_the_cache(fixtures, tmp_path, monkeypatch, core_input, core_reference):
    _populate_hub_cache(tmp_path, f"facebook/{CORE}", f"{CORE}.pt", fixtures.checkpoint(CORE))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    out = _forward(None, core_input)
    assert (out - core_reference).abs().max().item() <= 2e-5
    out = _forward(f"hf://facebook/{CORE}/{CORE}.pt", core_input)
    assert (out - core_reference).abs().max().item() <= 2e-5


def test_hub_miss_names_the_way_out(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(CheckpointError, match="--checkpoint PATH.*--random-init"):
        load_model("L14")
    with pytest.raises(CheckpointError, match="not an hf:// path"):
        load_model("L14", "hf://only-repo")


def test_no_network_and_no_cache_fails_at_once(tmp_path, monkeypatch):
    """No retries against an unreachable hub: one look at the network, then the way out."""
    import socket

    import huggingface_hub
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    tries = []
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout: tries.append(address) or _raise(OSError()))
    online = []
    real = huggingface_hub.hf_hub_download
    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda **k: real(**k) if k.get("local_files_only") else online.append(k))
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache and huggingface.co cannot be reached"):
        load_model("L14")
    assert tries == [("huggingface.co", 443)] and online == []


def _raise(exc: Exception):
    raise exc
