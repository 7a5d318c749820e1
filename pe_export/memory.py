"""Giving freed memory back to the operating system between the stages of one process."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc


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
