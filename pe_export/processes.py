"""Child processes that never outlive pe-export: a killed parent runs no cleanup, so Linux ends them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child: ask Linux to kill this process when its parent dies. Call it in the child (as a
    Popen preexec_fn, or first thing in a worker's main) with the parent's pid."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)
