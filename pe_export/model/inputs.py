"""A file as the `pixel_values` a variant's artifact takes: PLM's thumbnail and tiles of an image, or its
frames of a video; for every other variant the one resized image its artifacts take."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pe_export import artifacts
from pe_export.errors import UsageError
from pe_export.handoff import MAX_TILES
from pe_export.model.preprocess import ImageLike, preprocess
from pe_export.model.tiles import TileGrid, plm_tiles
from pe_export.model.video import is_video, plm_frames
from pe_export.variants import Variant, get_variant


@dataclass(frozen=True)
class ModelInput:
    """`pixel_values` (N, 3, S, S) float32 for one file, with how it was cut."""

    pixel_values: np.ndarray
    tokens_per_input: int  # output tokens per image, tile or frame
    grid: TileGrid | None = None  # PLM images: the tiles after the thumbnail
    frames: tuple[int, ...] | None = None  # PLM videos: the positions of the frames taken

    @property
    def tokens(self) -> int:
        """The output tokens of the whole input (for PLM: the image tokens its prompt holds)."""
        return len(self.pixel_values) * self.tokens_per_input

    def describe(self) -> str:
        count = len(self.pixel_values)
        if self.grid is not None:
            what = (f"thumbnail + {self.grid.columns}x{self.grid.rows} grid "
                    f"({self.grid.tiles} tile{'s' if self.grid.tiles > 1 else ''})")
        elif self.frames is not None:
            what = f"{count} frame{'s' if count > 1 else ''} (of positions {self.frames[0]}..{self.frames[-1]})"
        else:
            what = "1 image"
        return f"{what}: {count} x {self.tokens_per_input} = {self.tokens} tokens"


def image_pixels(image: ImageLike, size: int, max_tiles: int = 0) -> tuple[torch.Tensor, TileGrid | None]:
    """An image as `pixel_values`: with `max_tiles`, PLM's thumbnail and tiles and their grid; without,
    the one resized image. Inference, `preprocess` and the Triton image ensemble all cut images here."""
    if max_tiles:
        return plm_tiles(image, max_tiles, size)
    return preprocess(image, size)[None], None


def model_input(path: str | Path, variant: str | Variant) -> ModelInput:
    """The input the variant's artifacts take for the image or video at `path`."""
    variant = get_variant(variant)
    plm = variant.family == "PLM"
    if is_video(path):
        if not plm:
            raise UsageError(f"{variant.name} takes images; video frames are PerceptionLM's input (use --variant "
                             "PLM-1B, PLM-3B or PLM-8B)")
        frames, positions = plm_frames(path)
        return ModelInput(frames.numpy(), variant.output_tokens, frames=tuple(positions))
    pixels, grid = image_pixels(path, variant.image_size, MAX_TILES if plm else 0)
    return ModelInput(pixels.numpy(), variant.output_tokens, grid=grid)


def write_input(prepared: ModelInput, output: Path) -> Path:
    """Save `pixel_values` as a .npy file, written whole or not at all (`artifacts.prepare_destination`
    checks the destination first)."""
    with artifacts.staging(output) as work:
        staged = work / output.name
        with open(staged, "wb") as file:  # a file object: np.save would append .npy to a path
            np.save(file, prepared.pixel_values)
        artifacts.publish([staged], output)
    return output


def preprocess_file(path: str | Path, variant: str | Variant, output: Path) -> ModelInput:
    """`pe-export preprocess`: the file's input for the variant, written to `output`."""
    if output.suffix != ".npy":
        raise UsageError(f"the output is a NumPy file: give a name ending in .npy, not {output.name}")
    artifacts.prepare_destination(output)  # before the decode, which may take a while
    prepared = model_input(path, variant)
    write_input(prepared, output)
    return prepared
