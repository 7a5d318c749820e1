"""What an LLM runtime needs to place PerceptionLM's image embeddings, and the embeddings it takes.

A PLM artifact maps `pixel_values [N, 3, 448, 448]` (an image's thumbnail and tiles, or a video's
frames) to `image_features [N, 256, D]`. The runtime replaces the prompt's image tokens, in order, with
those N x 256 rows: the thumbnail's first, then the tiles row by row. Every artifact's manifest carries
this as its `handoff`, read off the graph itself (D, tokens, tile size, dtype).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

TILE = 448  # PLM's tile and frame size
MAX_TILES = 36  # tiles beside the thumbnail
MAX_FRAMES = 32
IMAGE_TOKEN_ID = 128002  # the id of PLM's image placeholder token, which the embeddings replace
MEAN = STD = 0.5
ORDER = "an image: its thumbnail, then its tiles row by row, each row left to right; a video: its frames in time order"
_TENSORRT_DTYPES = {"FLOAT": "float32", "HALF": "float16", "BF16": "bfloat16"}  # engines' manifests name them so
PROJECTOR_FORM = "2x2 mean before the second Linear"  # the same function as Meta's Linear-then-mean, 4x less GEMM


def dtype_name(name: str) -> str:
    """A tensor's dtype as NumPy and torch spell it (float32), whichever artifact's manifest it comes from."""
    return _TENSORRT_DTYPES.get(name, name)


class Handoff(BaseModel):
    """How a PLM artifact's output is placed in an LLM's input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    embedding_dim: int
    tokens_per_tile: int
    tile_size: int
    max_tiles: int = MAX_TILES
    max_frames: int = MAX_FRAMES
    thumbnail: Literal["first"] = "first"  # images only: video frames have none
    order: str = ORDER
    mean: tuple[float, float, float] = (MEAN,) * 3
    std: tuple[float, float, float] = (STD,) * 3
    dtype: str
    image_token_id: int = IMAGE_TOKEN_ID
    projector: str = PROJECTOR_FORM


def handoff_of(options: dict, inputs: list, outputs: list) -> Handoff | None:
    """The hand-off of a graph whose output is PLM's image features (None for any other graph): from its
    manifest's options and tensors, `[N, 3, S, S] -> [N, tokens, D]`."""
    if options.get("output") != "image_features":
        return None
    *_, tokens, dim = outputs[0].shape
    return Handoff(embedding_dim=dim, tokens_per_tile=tokens, tile_size=inputs[0].shape[-1],
                   dtype=dtype_name(outputs[0].dtype))


def image_embeddings(features: np.ndarray) -> np.ndarray:
    """One image's (or video's) artifact output `[N, tokens, D]` as the `[N * tokens, D]` rows an LLM
    takes in place of its image tokens (vLLM's image embeddings input, Hugging Face's `inputs_embeds`)."""
    if features.ndim != 3:
        raise ValueError(f"expected image features [N, tokens, D], got shape {list(features.shape)}")
    return features.reshape(-1, features.shape[-1])


def place_embeddings(input_ids: np.ndarray, text_embeddings: np.ndarray, embeddings: np.ndarray,
                     image_token_id: int = IMAGE_TOKEN_ID) -> np.ndarray:
    """A prompt's `[L, D]` input embeddings with its image tokens replaced, in order, by `embeddings`
    `[T, D]` (what Hugging Face's PerceptionLM does with `masked_scatter`)."""
    slots = np.flatnonzero(input_ids == image_token_id)
    if len(slots) != len(embeddings):
        raise ValueError(f"the prompt has {len(slots)} image tokens but {len(embeddings)} embeddings were given")
    placed = text_embeddings.copy()
    placed[slots] = embeddings.astype(placed.dtype)
    return placed
