"""Which weights a command works on, and where loaded weights came from. Nothing here imports torch
(`pe_export.model` reads and loads weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pe_export.errors import UsageError
from pe_export.variants import Variant


@dataclass(frozen=True)
class WeightSource:
    """Where the weights came from: a checkpoint (with the sha256 of its tensors in Meta's names, the same
    for the same weights in any format) or a random-init seed."""

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

    def as_job(self) -> dict:
        """These fields as JSON, for a worker process to rebuild the source from."""
        variant = self.variant if isinstance(self.variant, str) else self.variant.name
        return {"variant": variant, "checkpoint": str(self.checkpoint) if self.checkpoint else None,
                "random_init": self.random_init, "seed": self.seed}
