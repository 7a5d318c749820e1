"""The builder's timing cache: one file per TensorRT release and GPU, beside the path the profile or
--timing-cache names, since TensorRT refuses a cache made on another device or release. A cache that
cannot be used or saved is a note for the user, never a lost engine."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from pe_export.runners.tensorrt_env import Gpu

if TYPE_CHECKING:
    import tensorrt as trt


def cache_file(base: Path, trt_version: str, gpu: Gpu) -> Path:
    """`tc/dc.cache` -> `tc/dc.trt10.13.0.35.nvidia-h200-sm90.cache`."""
    return base.with_name(f"{base.stem}.trt{trt_version}.{gpu.slug}{base.suffix or '.cache'}")


def attach_timing_cache(config: trt.IBuilderConfig, path: Path) -> list[str]:
    """Give the build the cache stored at `path`, or a fresh one where there is none or TensorRT
    refuses it (set_timing_cache returns False for a cache from another GPU or release); notes say why."""
    try:
        stored = path.read_bytes() if path.is_file() else b""
    except OSError as exc:
        stored, notes = b"", [f"could not read the timing cache {path} ({exc.strerror}); built without it"]
    else:
        notes = []
    cache: trt.ITimingCache | None = config.create_timing_cache(stored)
    if cache is not None and config.set_timing_cache(cache, False):
        return notes
    if stored:
        notes.append(f"TensorRT refused the timing cache {path} (made on another GPU or TensorRT, or damaged); "
                     "built without it, and a new one replaces it")
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        notes.append("TensorRT refused a new timing cache; this build keeps none")
    return notes


def save_timing_cache(config: trt.IBuilderConfig, path: Path) -> list[str]:
    """Write the cache the build used (atomically); a failure is a note, since the engine is already safe."""
    cache: trt.ITimingCache | None = config.get_timing_cache()
    if cache is None:
        return [f"TensorRT returned no timing cache after the build; {path} was not updated"]
    staged = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staged.write_bytes(bytes(cache.serialize()))
        staged.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):  # nothing may be there, or no folder to hold it
            staged.unlink()
        return [f"could not save the timing cache {path}: {exc.strerror}"]
    return []
