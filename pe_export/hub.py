"""Where a checkpoint comes from: a local file, an `hf://` path, or the variant's file on the Hugging Face hub."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlparse

from pe_export.errors import CheckpointError
from pe_export.variants import Variant

HF_SCHEME = "hf://"
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
