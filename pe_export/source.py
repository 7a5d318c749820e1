"""Which weights a command works on, and where loaded weights came from. Nothing here imports torch
(`pe_export.model.load_source` loads them), so a process that hands the loading to a worker never does."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pe_export.errors import CheckpointError, UsageError
from pe_export.variants import Variant, get_variant

if TYPE_CHECKING:
    from pe_export.artifacts import Digests


@dataclass(frozen=True)
class WeightSource:
    """Where the weights came from: a checkpoint file (with its sha256) or a random-init seed."""

    checkpoint: Path | None
    sha256: str | None
    seed: int | None

    def describe(self) -> str:
        return f"random-init (seed {self.seed})" if self.checkpoint is None else str(self.checkpoint)

    def as_dict(self) -> dict:
        return {"checkpoint": str(self.checkpoint) if self.checkpoint else None, "sha256": self.sha256, "seed": self.seed}


@dataclass(frozen=True)
class ModelSource:
    """Which weights a command works on: a variant with a checkpoint, its hub file, or random init."""

    variant: str | Variant
    checkpoint: str | Path | None = None
    random_init: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        if self.checkpoint and self.random_init:
            raise UsageError("give either --checkpoint or --random-init, not both")

    def weights(self, digests: Digests) -> WeightSource:
        """Where the weights come from, without loading them: the seed, or the checkpoint file (a hub
        file from the cache or the hub) with its sha256."""
        if self.random_init:
            return WeightSource(None, None, self.seed)
        from pe_export.hub import resolve_checkpoint

        path = resolve_checkpoint(get_variant(self.variant), self.checkpoint)
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}")
        return WeightSource(path, digests.sha256(path), None)

    def as_job(self) -> dict:
        """These fields as JSON, for a worker process to rebuild the source from."""
        variant = self.variant if isinstance(self.variant, str) else self.variant.name
        return {"variant": variant, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "random_init": self.random_init, "seed": self.seed}
