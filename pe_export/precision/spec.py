"""What a precision variant is, without making one: the profile a request runs with (checked once, for
every command that makes a precision ONNX), where the file goes, and its key. Nothing here imports
torch, so a command can decide reuse before (or without) loading weights."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from pathlib import Path

from pe_export.artifacts import Digests
from pe_export.images import image_files
from pe_export.onnx.spec import ExportOptions, ExportResult
from pe_export.precision.profiles import SYNTHETIC, CalibrationSection, Profile, resolve_profile
from pe_export.precisions import get_precision
from pe_export.source import ModelSource
from pe_export.variants import get_variant


def export_options(profile: Profile) -> ExportOptions:
    e = profile.export
    return ExportOptions(target=e.target, opset=e.opset, rope=e.rope, attention=e.attention, output=e.output)


def precision_path(fp32: Path, precision: str) -> Path:
    return fp32.with_name(f"{fp32.stem}.{precision}.onnx")


def request_profile(
    source: ModelSource,
    precision: str,
    profile: str | Path | None,
    calib: str | None,
    samples: int | None,
    *,
    onnx_precision: str | None = None,
    default: Callable[[str], Profile] | None = None,
) -> Profile:
    """The profile a command runs with (the named one, else `default(variant)` or the variant's
    default), with the command line's calibration, refused before any work when it cannot make
    `precision` from the ONNX of `onnx_precision` (default: the same precision)."""
    from pe_export.precision.convert import require_tools

    variant = get_variant(source.variant)
    base = resolve_profile(profile, variant) if profile or default is None else default(variant.name)
    chosen = base.with_calibration(calib, samples)
    chosen.require(precision)
    made = onnx_precision or precision
    require_tools(made)
    chosen.require_real_calibration(made, not source.random_init, calib)
    return chosen


def calibration_order(files: list[Path], seed: int) -> list[Path]:
    """The order calibration takes a source's images in: shuffled by the profile's seed."""
    order = list(files)
    random.Random(seed).shuffle(order)
    return order


def calibration_fingerprint(calibration: CalibrationSection, digests: Digests) -> str:
    """What decides whether an artifact calibrated on this source can be reused, without decoding an
    image: every image's name and size (a file added, removed or resized changes it) and the bytes of
    the images calibration takes first, in its seeded order."""
    if calibration.source == SYNTHETIC:
        return SYNTHETIC
    files = image_files(calibration.source)
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.name}\0{path.stat().st_size}\0".encode())
    for path in calibration_order(files, calibration.seed)[:calibration.samples]:
        digest.update(digests.sha256(path).encode())
    return digest.hexdigest()


def precision_key(fp32: ExportResult, precision: str, profile: Profile, digests: Digests) -> dict:
    """Everything a precision variant depends on: its source ONNX's identity, calibration settings and
    images, quantization settings and parity threshold."""
    calibrated = get_precision(precision).calibrated
    return {
        "precision": precision,
        "source_onnx": fp32.manifest.identity,
        **(calibration_key(profile, digests) if calibrated else {"calibration": None, "calibration_images": None}),
        "quantization": getattr(profile.quantization, precision).model_dump(),
        "threshold": profile.threshold(precision),
    }



def calibration_key(profile: Profile, digests: Digests) -> dict:
    """What a calibrated artifact depends on of its calibration: the profile's settings and its images."""
    return {"calibration": profile.calibration.model_dump(),
            "calibration_images": calibration_fingerprint(profile.calibration, digests)}
