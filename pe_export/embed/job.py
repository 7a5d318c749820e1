"""One embedding job: the artifact, the source's images cut into shards, and how outputs become rows.

Both engines (this machine's threads, or Ray Data) take the same shards and rows and give the same
`ShardResult`s; `pe_export.embed.embed` writes them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pe_export.embed.output import Failure, ShardResult
from pe_export.embed.sources import ImageFailed, Item, load_pixels
from pe_export.errors import UsageError
from pe_export.manifests import EngineManifest, GraphManifest
from pe_export.precision.profiles import load_profile
from pe_export.validate import run_in_chunks
from pe_export.variants import Variant

Reduce = Literal["mean", "cls", "none"]
DEFAULT_BATCH = 8
Run = Callable[[np.ndarray], np.ndarray]


class EmbedOptions(BaseModel):
    """How a source is embedded; None takes the artifact's own choice."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    reduce: Optional[Reduce] = None  # token outputs: mean over the patch tokens unless told
    dtype: Literal["float32", "float16"] = "float32"
    batch: Optional[int] = Field(None, ge=1)
    shard_size: int = Field(1024, ge=1)
    column: Optional[str] = None  # Parquet sources: the column of paths or image bytes
    engine: Literal["local", "ray"] = "local"
    workers: Optional[int] = Field(None, ge=1)  # local: decoding threads; ray: runner actors
    gpus_per_worker: float = Field(0, ge=0)
    ray_address: Optional[str] = None
    backend: Optional[str] = None  # the runner's backend; by default the artifact type's
    threads: Optional[int] = Field(None, ge=1)
    overwrite: bool = False


@dataclass(frozen=True)
class Shard:
    index: int
    items: list[Item]


@dataclass(frozen=True)
class Rows:
    """How the artifact's outputs become embedding rows."""

    reduce: Optional[Reduce]
    cls_first: bool  # token outputs: the class token is the first
    shape: tuple[int, ...]  # one row's: [D], or unreduced tokens [tokens, width]

    def __call__(self, outputs: np.ndarray) -> np.ndarray:
        if self.reduce is None or self.reduce == "none":
            return outputs
        if self.reduce == "cls":
            return outputs[:, 0]
        return outputs[:, int(self.cls_first):].mean(axis=1)


def rows_for(manifest: GraphManifest, variant: Variant, reduce: Optional[Reduce]) -> Rows:
    """Refuse a reduction the artifact's output cannot take; the default is mean for tokens."""
    output = manifest.options.get("output", variant.default_output)
    per_image = tuple(int(d) for d in manifest.outputs[0].shape[1:])
    if output == "image_features":
        raise UsageError("embed gives one input per image, and a PerceptionLM artifact takes an image's thumbnail and "
                         "tiles; embed with the PE-Lang tower's artifact, or run PLM's with `pe-export preprocess`")
    if output == "pooled":
        if reduce not in (None, "none"):
            raise UsageError(f"{manifest.variant}'s artifact gives one pooled embedding per image; --reduce applies "
                             "to token outputs")
        return Rows(None, False, per_image)
    cls_first = variant.cls_token and not manifest.options.get("strip_cls", False)
    if reduce == "cls" and not cls_first:
        raise UsageError(f"this artifact's tokens have no class token ({variant.name}"
                         f"{' has none' if not variant.cls_token else ' exported with --strip-cls'}); use --reduce mean or none")
    reduce = reduce or "mean"
    return Rows(reduce, cls_first, per_image if reduce == "none" else per_image[-1:])


def default_batch(manifest: GraphManifest) -> int:
    """The artifact's own batch: its static one, its engine's optimum, its profile's, else 8."""
    if manifest.static_batch:
        return manifest.static_batch
    if isinstance(manifest, EngineManifest) and manifest.settings.get("batch_opt"):
        return int(manifest.settings["batch_opt"])
    profile = getattr(manifest, "profile", None)
    if profile is not None and profile.path and Path(profile.path).is_file():
        return load_profile(Path(profile.path)).batch.opt
    return DEFAULT_BATCH


def shards_of(items: list[Item], size: int) -> list[Shard]:
    return [Shard(i, items[start:start + size]) for i, start in enumerate(range(0, len(items), size))]


def embed_shard(shard: Shard, pixels: Iterable[np.ndarray | ImageFailed], run: Run, batch: int, rows: Rows,
                static: bool) -> ShardResult:
    """The shard's result from its images' pixels (or their failures), in order, run `batch` at a time
    as they arrive."""
    ids, failures, waiting, chunks = [], [], [], []
    for item, x in zip(shard.items, pixels):
        if isinstance(x, ImageFailed):
            failures.append(Failure(item.id, str(x)))
            continue
        ids.append(item.id)
        waiting.append(x)
        if len(waiting) == batch:
            chunks.append(rows(run_batch(np.stack(waiting), run, batch, static)))
            waiting = []
    if waiting:
        chunks.append(rows(run_batch(np.stack(waiting), run, batch, static)))
    embeddings = np.concatenate(chunks) if chunks else np.zeros((0, *rows.shape), np.float32)
    return ShardResult(shard.index, ids, embeddings, failures)


def run_batch(pixels: np.ndarray, run: Run, batch: int, static: bool) -> np.ndarray:
    """One batch through the runner; a static-batch artifact gets its short last batch padded."""
    return run_in_chunks(run, pixels, batch) if static else run(pixels)


def pixels_of(item: Item, size: int) -> np.ndarray | ImageFailed:
    """The item's pixels, or the failure that says why there are none."""
    try:
        return load_pixels(item, size)
    except ImageFailed as exc:
        return exc
