"""Where a checkpoint comes from (a local file or folder, an `hf://` path, or the variant's file on the Hugging
Face hub) and which files it consists of."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from pe_export.errors import CheckpointError
from pe_export.variants import Variant

HF_SCHEME = "hf://"
LLM_PREFIXES = ("model.language_model.", "lm_head.")  # Hugging Face's PerceptionLM: the LLM, never read
REACH_SECONDS = 5  # without an answer by then, the hub counts as unreachable (instead of minutes of retries)


def resolve_checkpoint(variant: Variant, checkpoint: str | Path | None) -> Path:
    """A local path for the checkpoint, downloading (or taking from the hub cache) when needed.

    `None` means the variant's own hub file, `facebook/<name>` / `<name>.pt`.
    """
    if checkpoint is None:
        return _download(variant.hub_repo, variant.hub_filename)
    text = str(checkpoint)
    if text.startswith(HF_SCHEME):
        parts = text.removeprefix(HF_SCHEME).split("/")
        if len(parts) < 3 or not all(parts):
            raise CheckpointError(f"'{text}' is not an hf:// path; write hf://<owner>/<repo>/<file>")
        return _download("/".join(parts[:2]), "/".join(parts[2:]))
    return Path(checkpoint).expanduser()


def _download(repo_id: str, filename: str) -> Path:
    """The cached copy when there is one; else a download, once the hub has shown it can be reached."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    way_out = "pass a local file with --checkpoint PATH, or use --random-init for random weights"
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"{filename} of {repo_id} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; "
                              f"{way_out}") from None
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if not _reachable(host):
        raise CheckpointError(f"{filename} of {repo_id} is not in the Hugging Face cache and {host} cannot be reached "
                              f"(no network?); {way_out}") from None
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"could not get {filename} from the Hugging Face hub repo {repo_id} (offline, not cached, or not there); "
            f"{way_out}"
        ) from exc


def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=REACH_SECONDS).close()
    except OSError:
        return False
    return True


_META_PART = re.compile(r"consolidated\.\d+\.pth")
_HF_SHARD = re.compile(r"-\d+-of-\d+\.safetensors")
_HF_INDEX = "model.safetensors.index.json"


def checkpoint_files(path: Path) -> list[Path]:
    """The files a checkpoint path stands for: the file itself, all of Meta's `consolidated.NN.pth`
    parts (given one of them), the shards a Hugging Face index names (given the index or a shard),
    or what a folder holds in one of these forms."""
    if path.is_dir():
        return checkpoint_files(_in_folder(path))
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if _META_PART.fullmatch(path.name):
        return sorted(p for p in path.parent.iterdir() if _META_PART.fullmatch(p.name))
    if _HF_SHARD.search(path.name) and (path.parent / _HF_INDEX).is_file():
        path = path.parent / _HF_INDEX
    if path.name.endswith(".index.json"):
        return _shards(path)
    return [path]


def _in_folder(folder: Path) -> Path:
    for name in ("consolidated.pth", "consolidated.00.pth", _HF_INDEX, "model.safetensors"):
        if (folder / name).is_file():
            return folder / name
    found = [p for p in sorted(folder.iterdir()) if p.suffix in (".pt", ".pth", ".bin", ".safetensors")]
    if len(found) != 1:
        what = "no checkpoint" if not found else f"{len(found)} checkpoint files"
        raise CheckpointError(f"{folder} holds {what} (consolidated.pth, model.safetensors or its index, or one "
                              ".pt/.safetensors file); give the file with --checkpoint")
    return found[0]


def _shards(index: Path) -> list[Path]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted({shard for key, shard in weight_map.items() if not key.startswith(LLM_PREFIXES)})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is no safetensors index (a JSON file with a weight_map): {exc}") from exc
    missing = [n for n in names if not (index.parent / n).is_file()]
    if missing:
        raise CheckpointError(f"{index} names shards that are not beside it: {', '.join(missing)}; download them too")
    return [index.parent / n for n in names]  # shards of the LLM alone are never opened
