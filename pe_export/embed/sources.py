"""What `embed` reads: the images of a source, in a fixed order, and each one as the model's input.

A source is a folder (its images, recursively), a glob (`photos/**/*.jpg`), one image, a text file of image
paths (one a line; relative paths are taken from the file's folder), or a Parquet file with a column
of paths or of encoded image bytes. Every image gets an id: its path as given, or for image bytes
the row number (or the file's `id` column where it has one).
"""

from __future__ import annotations

import glob
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image, UnidentifiedImageError

from pe_export.errors import UsageError, require_extra
from pe_export.images import IMAGE_SUFFIXES, image_files
from pe_export.model.preprocess import preprocess

PATH_COLUMNS = ("path", "image_path", "file", "filename", "url")
BYTES_COLUMNS = ("image", "bytes", "image_bytes", "jpg", "png")


@dataclass(frozen=True)
class Item:
    """One image of a source: its id, and where its bytes are (a file) or the bytes themselves."""

    id: str
    path: Optional[str] = None
    data: Optional[bytes] = None


class ImageFailed(Exception):
    """An image that cannot be read or decoded: skipped, with this reason."""


def read_source(source: str, column: Optional[str] = None) -> list[Item]:
    """The images of `source` in their order (sorted paths for folders and globs, the file's order for
    lists and Parquet); an empty or unreadable source is a UsageError."""
    path = Path(source)
    if path.is_dir() or (glob.has_magic(source) and not path.exists()):
        items = [Item(str(p), str(p)) for p in image_files(source)]
    elif path.suffix == ".parquet" and path.is_file():
        items = _parquet_items(path, column)
    elif path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
        items = [Item(source, source)]
    elif path.is_file():
        items = _listed_items(path)
    else:
        raise UsageError(f"source not found: {source}; give a folder, a glob, a text file of paths or a Parquet file")
    if not items:
        raise UsageError(f"no images in {source} (looked for {', '.join(IMAGE_SUFFIXES)})")
    return items


def source_digest(items: list[Item]) -> str:
    """The sha256 of the ids in order, and of the bytes of images held in the source itself: what a rerun
    must find to resume the same job."""
    digest = hashlib.sha256()
    for item in items:
        digest.update(item.id.encode() + b"\0")
        if item.data is not None:
            digest.update(hashlib.sha256(item.data).digest())
    return digest.hexdigest()


def _listed_items(path: Path) -> list[Item]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {path} as a text file of image paths: {exc}") from None
    entries = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [Item(entry, str(path.parent / entry)) for entry in entries]


def _parquet_items(path: Path, column: Optional[str]) -> list[Item]:
    require_extra("embed", "reading Parquet sources", "pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as exc:
        raise UsageError(f"cannot read {path} as Parquet: {exc}") from None
    names = table.column_names
    chosen = column or next((c for c in (*PATH_COLUMNS, *BYTES_COLUMNS) if c in names), None)
    if chosen not in names:
        wanted = f"column {column!r}" if column else f"a column named one of {', '.join(PATH_COLUMNS + BYTES_COLUMNS)}"
        raise UsageError(f"{path} has no {wanted} (its columns: {', '.join(names)}); name one with --column")
    kind = table.schema.field(chosen).type
    values = table.column(chosen).to_pylist()
    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        ids = [str(i) for i in table.column("id").to_pylist()] if "id" in names else [str(i) for i in range(len(values))]
        return [Item(i, data=v or b"") for i, v in zip(ids, values)]  # a null cell: an image that fails to decode
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return [Item(v, v if Path(v).is_absolute() else str(path.parent / v)) for v in values if v is not None]
    raise UsageError(f"{path}: column {chosen!r} holds {kind}; it must hold image paths (strings) or image bytes")


def load_pixels(item: Item, size: int) -> np.ndarray:
    """The image as the model's (3, size, size) float32 input, by pe-export's own preprocessing (the
    function inference and calibration use); ImageFailed with the reason when it cannot be read."""
    try:
        with Image.open(io.BytesIO(item.data) if item.data is not None else item.path) as image:
            return preprocess(image, size).numpy()
    except FileNotFoundError:
        raise ImageFailed("file not found") from None
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError, UsageError) as exc:
        raise ImageFailed(f"cannot decode: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
