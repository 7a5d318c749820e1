"""Calibration data: real images preprocessed exactly as at inference, or seeded synthetic inputs."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from pe_export.errors import UsageError
from pe_export.images import IMAGE_SUFFIXES, image_files
from pe_export.model.preprocess import preprocess
from pe_export.precision.profiles import SYNTHETIC
from pe_export.precision.spec import calibration_order


@dataclass(frozen=True)
class CalibrationSet:
    batch: np.ndarray  # (N, 3, S, S) float32
    source: str
    files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable images, never dropped silently
    sha256: str = ""  # of the bytes calibration read: the image files used, or the synthetic batch
    bytes: int = 0  # how many bytes that hash covers

    def describe(self) -> dict:
        return {"source": self.source, "count": len(self.batch), "files": len(self.files),
                "skipped": len(self.skipped), "skipped_files": self.skipped[:20], "sha256": self.sha256,
                "bytes": self.bytes}


def load_calibration(source: str, samples: int, size: int, seed: int = 0, allow_fewer: bool = False) -> CalibrationSet:
    """`samples` inputs of `size` x `size` from `source`; fewer usable images than asked is an error unless allowed."""
    if source == SYNTHETIC:
        rng = np.random.default_rng(seed + 100)  # apart from the parity inputs' seeds
        batch = (rng.random((samples, 3, size, size), dtype=np.float32) * 2 - 1).astype(np.float32)
        return CalibrationSet(batch, SYNTHETIC, sha256=hashlib.sha256(batch.tobytes()).hexdigest(), bytes=batch.nbytes)
    files = image_files(source)
    if not files:
        raise UsageError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in calibration source {source!r}")
    images, used, skipped = [], [], []
    digest, hashed = hashlib.sha256(), 0
    for path in calibration_order(files, seed):
        if len(images) == samples:
            break
        try:
            images.append(preprocess(path, size).numpy())
        except UsageError:
            skipped.append(str(path))
            continue
        used.append(str(path))
        data = path.read_bytes()
        digest.update(data)
        hashed += len(data)
    if len(images) < samples and not allow_fewer:
        raise UsageError(
            f"only {len(images)} usable images in {source!r} for {samples} samples ({len(skipped)} unreadable); "
            "add images, lower --samples, or set calibration.allow_fewer in the profile"
        )
    if not images:
        raise UsageError(f"none of the {len(skipped)} images in {source!r} could be read")
    return CalibrationSet(np.stack(images), source, used, skipped, digest.hexdigest(), hashed)
