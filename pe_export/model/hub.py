"""Where a checkpoint comes from: a local file, an `hf://` path, or the variant's file on the Hugging Face hub."""

from __future__ import annotations

from pathlib import Path

from pe_export.errors import CheckpointError
from pe_export.variants import Variant

HF_SCHEME = "hf://"


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
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"could not get {filename} from the Hugging Face hub repo {repo_id} (offline, not cached, or not there); "
            "pass a local file with --checkpoint PATH, or use --random-init for random weights"
        ) from exc
