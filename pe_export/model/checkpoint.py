"""Reading PE checkpoints safely and bringing their keys to Meta's names.

Accepted: Meta `.pt` files (bare, CLIP files with `visual.` keys, `state_dict`/`weights`
wrappers, `module.` prefixes), timm files (`.safetensors`, `.bin`, `.pth`), and PerceptionLM's
checkpoints: Meta's `consolidated.pth` or its `consolidated.NN.pth` parts, and Hugging Face's
`model.safetensors` or its shards with their `model.safetensors.index.json` (a folder holding any of
these works too). Pickles are read with `weights_only=True` only, so a file that tries to run code
is refused.

The weights' digest is taken over the tensors in Meta's names, not over the files, so the same
weights in any of these forms have one digest (and their artifacts one identity).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from dataclasses import replace
from pathlib import Path

import torch

from pe_export.errors import CheckpointError
from pe_export.hub import LLM_PREFIXES, checkpoint_files
from pe_export.variants import VARIANTS, Variant

StateDict = dict[str, torch.Tensor]

_WRAPPERS = ("state_dict", "weights", "model")
_HF_PLM_TOWER = "model.vision_tower.timm_model."
_HF_PLM_PROJECTOR = {"model.multi_modal_projector.linear_1.": "vision_projector.projector.0.",
                     "model.multi_modal_projector.linear_2.": "vision_projector.projector.2."}
_TIMM_RENAMES: tuple[tuple[str, str], ...] = (
    (r"^patch_embed\.proj\.", "conv1."),
    (r"^norm_pre\.", "ln_pre."),
    (r"^norm\.", "ln_post."),
    (r"^blocks\.(\d+)\.", r"transformer.resblocks.\1."),
    (r"\.norm1\.", ".ln_1."),
    (r"\.norm2\.", ".ln_2."),
    (r"\.attn\.qkv\.(weight|bias)$", r".attn.in_proj_\1"),
    (r"\.attn\.proj\.", ".attn.out_proj."),
    (r"\.gamma_(\d)$", r".ls_\1.gamma"),
    (r"\.mlp\.fc1\.", ".mlp.c_fc."),
    (r"\.mlp\.fc2\.", ".mlp.c_proj."),
    (r"^attn_pool\.latent$", "attn_pool.probe"),
    (r"^attn_pool\.proj\.", "attn_pool.attn.out_proj."),
    (r"^attn_pool\.norm\.", "attn_pool.layernorm."),
)


def read_checkpoint(path: Path) -> StateDict:
    """Read a checkpoint (one file, or all the parts `checkpoint_files` finds) into a flat state dict
    with Meta's key names."""
    state: StateDict = {}
    for file in checkpoint_files(path):
        raw = _read_safetensors(file) if file.suffix == ".safetensors" else _read_pickle(file)
        state.update(_unwrap(raw, file))  # parts hold distinct keys, as Meta's loader assumes
    return normalize_keys(state, path)


def weights_digest(state: StateDict) -> tuple[str, int]:
    """The sha256 over every tensor (name, dtype, shape and values, in name order) and the bytes it read."""
    digest, read = hashlib.sha256(), 0
    for name in sorted(state):
        tensor = state[name].detach().contiguous()
        digest.update(f"{name}|{str(tensor.dtype).removeprefix('torch.')}|{list(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
        read += tensor.numel() * tensor.element_size()
    return digest.hexdigest(), read


def _read_safetensors(path: Path) -> StateDict:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as file:  # tensor by tensor: a VLM's LLM weights are never read
            return {k: file.get_tensor(k) for k in file.keys() if not k.startswith(LLM_PREFIXES)}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path} as safetensors: {_first_line(exc)}") from exc


def _read_pickle(path: Path) -> object:
    try:
        # mmap keeps a multi-GB checkpoint out of memory until its tensors are used.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        if "global" not in str(exc).lower():  # not a pickle at all, rather than one naming unsafe code
            raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: it is no pickle or zip "
                                  "archive of tensors (truncated, or another kind of file?)") from exc
        raise CheckpointError(
            f"refused to load {path}: it holds Python objects besides tensors, and only plain state dicts "
            "are loaded (torch.load weights_only=True); re-save it with torch.save(model.state_dict())"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - the unpickler raises anything on garbage bytes
        raise CheckpointError(f"cannot read {path} as a PyTorch checkpoint: {_first_line(exc)}") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _unwrap(raw: object, path: Path) -> StateDict:
    while isinstance(raw, dict):
        inner = next((raw[k] for k in _WRAPPERS if isinstance(raw.get(k), dict)), None)
        if inner is None:
            break
        raw = inner
    tensors = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)} if isinstance(raw, dict) else {}
    if not tensors:
        raise CheckpointError(f"{path} holds no state dict of tensors; is it a PE checkpoint?")
    return tensors


def normalize_keys(state: StateDict, path: Path) -> StateDict:
    """Strip `module.`, keep only the vision tower of CLIP files and the tower and projector of
    PerceptionLM's (Meta's or Hugging Face's; its LLM is dropped unread), and map timm names to Meta's."""
    state = {k.removeprefix("module."): v for k, v in state.items()}
    if any(k.startswith("visual.") for k in state):
        state = {k.removeprefix("visual."): v for k, v in state.items() if k.startswith("visual.")}
    if any(k.startswith("vision_model.") for k in state):
        state = {k.removeprefix("vision_model."): v for k, v in state.items()
                 if k.startswith(("vision_model.", "vision_projector."))}
    if any(k.startswith(_HF_PLM_TOWER) for k in state):
        return _from_hf_plm(state, path)
    if "patch_embed.proj.weight" in state:
        state = _from_timm(state, path)
    return state


def _from_hf_plm(state: StateDict, path: Path) -> StateDict:
    """Hugging Face's PerceptionLM: the tower in timm's names, the projector as linear_1/linear_2."""
    tower = _from_timm({k.removeprefix(_HF_PLM_TOWER): v for k, v in state.items() if k.startswith(_HF_PLM_TOWER)}, path)
    projector = {new + k.removeprefix(old): v for k, v in state.items()
                 for old, new in _HF_PLM_PROJECTOR.items() if k.startswith(old)}
    return {**tower, **projector}


def _from_timm(state: StateDict, path: Path) -> StateDict:
    out: StateDict = {}
    for key, value in state.items():
        if key == "cls_token":
            out["class_embedding"] = value.reshape(-1)
        elif key == "pos_embed":
            out["positional_embedding"] = value.squeeze(0)
        elif key == "head.weight":
            out["proj"] = value.t()
        elif key == "head.bias":
            if value.count_nonzero():
                raise CheckpointError(f"{path}: head.bias is not zero, which PE's bias-free projection cannot hold")
        elif not key.startswith(("attn_pool.q.", "attn_pool.kv.")):
            for pattern, repl in _TIMM_RENAMES:
                key = re.sub(pattern, repl, key)
            out[key] = value
    for kind in ("weight", "bias"):
        q, kv = state.get(f"attn_pool.q.{kind}"), state.get(f"attn_pool.kv.{kind}")
        if q is not None and kv is not None:
            out[f"attn_pool.attn.in_proj_{kind}"] = torch.cat([q, kv])
    return out


def fit_projector(variant: Variant, state: StateDict) -> Variant:
    """The PLM variant with the projector width D its checkpoint holds, when that width is no registered
    variant's: a user's own VLM puts the PE-Lang tower before an LLM of another width. The strict check
    that follows then holds the whole projector to that D."""
    first = state.get("vision_projector.projector.0.weight")
    if not variant.projector_dim or first is None or first.shape[0] == variant.projector_dim or guess_variant(state):
        return variant
    return replace(variant, projector_dim=int(first.shape[0]))


def expected_shapes(variant: Variant) -> dict[str, tuple[int, ...]]:
    from pe_export.model.pe import PEVisionTower

    with torch.device("meta"):
        model = PEVisionTower(variant)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_keys(variant: Variant, state: StateDict, path: Path) -> None:
    """Strict check: every key present, nothing extra, every shape right; else list what is wrong."""
    expected = expected_shapes(variant)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [
        f"{k} {list(state[k].shape)} (expected {list(s)})"
        for k, s in expected.items()
        if k in state and tuple(state[k].shape) != s
    ]
    if not (missing or unexpected or misshaped):
        return
    problems = [
        f"{label}: {_listing(items)}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if items
    ]
    details = "; ".join(problems)
    owner = guess_variant(state)
    if owner is not None and owner != variant:
        raise CheckpointError(
            f"{path} is a {owner.name} checkpoint, not {variant.name}: use --variant {owner.alias or owner.name} "
            f"({details})"
        )
    raise CheckpointError(f"{path} does not fit {variant.name}; {details}")


def _listing(items: list[str], first: int = 3) -> str:
    shown = ", ".join(items[:first])
    return f"{shown} and {len(items) - first} more" if len(items) > first else shown


def guess_variant(state: StateDict) -> Variant | None:
    """The variant whose parameter shapes match the state dict exactly, if any."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return next((v for v in VARIANTS if expected_shapes(v) == shapes), None)
