"""Child processes: ones that never outlive pe-export (a killed parent runs no cleanup, so Linux ends
them), and a process tree as Linux's /proc shows it."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from pathlib import Path

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child: ask Linux to kill this process when its parent dies. Call it in the child (as a
    Popen preexec_fn, or first thing in a worker's main) with the parent's pid."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def process_tree(root: int) -> dict[int, int]:
    """`root` and every process descended from it, each with the bytes it holds resident now (Linux:
    read from /proc; a process that ends while it is read is left out)."""
    parents, resident = {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        pid = int(status.parent.name)
        parents[pid] = int(fields["PPid"])
        resident[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return {pid: resident[pid] for pid in tree if pid in resident}
