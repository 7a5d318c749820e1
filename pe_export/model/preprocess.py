"""Images to the normalized batch PE expects: resize to S x S, RGB, [0, 1], then (x - 0.5) / 0.5."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from pe_export.errors import UsageError

ImageLike = Union[str, Path, Image.Image, np.ndarray]
Interpolation = Literal["bilinear", "bicubic"]
MEAN = 0.5
STD = 0.5

_RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def open_image(image: ImageLike) -> Image.Image:
    """A PIL RGB image from a path, a PIL image or an HWC uint8 array (HW for grey)."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3):
            raise UsageError(f"arrays must be HxWx3 or HxW uint8, got {image.dtype} of shape {image.shape}")
        return Image.fromarray(image).convert("RGB")
    path = Path(image)
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise UsageError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"cannot read image {path}: {exc}") from exc


def normalize(picture: Image.Image) -> torch.Tensor:
    """An RGB image as it is, a (3, H, W) float32 tensor in [-1, 1]."""
    array = np.asarray(picture, dtype=np.float32) / 255.0
    return torch.from_numpy((array - MEAN) / STD).permute(2, 0, 1).contiguous()


def preprocess(image: ImageLike, size: int, interpolation: Interpolation = "bilinear") -> torch.Tensor:
    """One image as a (3, size, size) float32 tensor in [-1, 1]."""
    return normalize(open_image(image).resize((size, size), _RESAMPLE[interpolation]))


def preprocess_batch(
    images: Sequence[ImageLike] | Iterable[ImageLike], size: int, interpolation: Interpolation = "bilinear"
) -> torch.Tensor:
    """Several images as a (B, 3, size, size) batch."""
    tensors = [preprocess(image, size, interpolation) for image in images]
    if not tensors:
        raise UsageError("no images to preprocess")
    return torch.stack(tensors)
