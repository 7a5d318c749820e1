"""Which files are images to pe-export, and the images a folder or glob offers (read by nothing here:
decoding them is the model's preprocessing)."""

from __future__ import annotations

import glob
from pathlib import Path

from pe_export.errors import UsageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_files(source: str) -> list[Path]:
    """Images in a folder (recursively) or matching a glob, in a stable order."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = path.rglob("*")
    elif any(ch in source for ch in "*?["):
        candidates = (Path(p) for p in glob.glob(str(path), recursive=True))
    else:
        raise UsageError(f"calibration source {source!r} is neither a folder, a glob nor 'synthetic'")
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
