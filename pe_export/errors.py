"""Every error a user can act on, with the exit code the CLI returns for it.

Exit codes: 1 a missed parity threshold or a failed check, 2 bad input (usage, files, profiles,
manifests), 3 something the machine lacks (TensorRT, a GPU, an optional extra), 4 a tool or the
environment failed (a full disk, a worker killed for memory, TensorRT unable to parse or build, a
Triton server that stopped). The CLI prints the message as one line; `--debug` shows the traceback
instead. Any other exception is a bug in pe-export and shows its traceback.
"""

from __future__ import annotations

import importlib.util


class PeExportError(Exception):
    """An error with a message meant for the user and the exit code the CLI returns."""

    exit_code = 1


class CheckFailed(PeExportError):
    """An artifact missed its parity threshold, or a graph failed a check: nothing was published."""

    exit_code = 1


class UsageError(PeExportError):
    """Bad input: an unknown name, a missing or unreadable file, a checkpoint that does not fit."""

    exit_code = 2


class CheckpointError(UsageError):
    """A checkpoint that cannot be read, is unsafe, or does not match the variant."""


class BadReport(UsageError, ValueError):
    """A report file that is not a pe-export report (also a ValueError, as the Python API always raised)."""


class ToolFailed(PeExportError):
    """A tool or the environment failed under a valid request (disk, memory, TensorRT, OpenVINO, Triton):
    nothing was written; the message says what to look at."""

    exit_code = 4


class Unavailable(PeExportError):
    """A runtime, a device or an optional extra is missing here: nothing was written."""

    exit_code = 3


class TensorRTUnavailable(Unavailable):
    """No TensorRT or no GPU here."""


class MissingExtra(Unavailable):
    """An optional extra of pe-export is not installed."""


def require_extra(extra: str, purpose: str, *modules: str) -> None:
    """Refuse, before any work starts, a request whose optional extra is not installed.

    The message names the missing module and the one pip command that brings the extra.
    """
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a parent package is missing or broken
            found = False
        if not found:
            raise MissingExtra(f"{purpose} needs {module}, which is not installed: pip install 'pe-export[{extra}]'")
