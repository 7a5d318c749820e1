"""Memory of this process: giving freed memory back between stages, and its peak per measured step."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import resource
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def release_memory() -> None:
    """Collect garbage, then ask glibc to return free heap pages (freed weights otherwise stay in RSS)."""
    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return
    try:
        ctypes.CDLL(libc_name).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def free_weights(module: "torch.nn.Module") -> None:
    """Give the weights' memory back now, whoever still refers to the tensors.

    Exporters keep values that wrap the parameters (torch's ONNX exporter does, from its surviving
    graph), so deleting the module alone frees nothing. Swapping each tensor's data for an empty one does.
    """
    import torch

    for tensor in [*module.parameters(), *module.buffers()]:
        tensor.data = torch.empty(0, dtype=tensor.dtype)
    release_memory()


def reset_peak_rss() -> bool:
    """Start a new high-water mark (Linux: writing 5 to clear_refs resets VmHWM). False where unsupported."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def rss_mb() -> float:
    """What this process holds resident now (Linux; elsewhere its lifetime peak, an upper bound)."""
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """VmHWM since the last reset where Linux offers it, else the process's lifetime peak."""
    return _status_mb("VmHWM")


def _status_mb(field: str) -> float:
    if _STATUS.is_file():
        for line in _STATUS.read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
