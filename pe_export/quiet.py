"""Silencing third-party tools that narrate on stdout/stderr; the CLI shows its own progress."""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import sys
import warnings
from collections.abc import Iterator


@contextlib.contextmanager
def quiet(*loggers: str) -> Iterator[None]:
    """Swallow prints, progress bars and warnings, and raise the named loggers to ERROR, for the block."""
    saved = {name: logging.getLogger(name).level for name in loggers}
    previous = logging.root.manager.disable
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in loggers:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        # some tools give their loggers handlers bound to the real stderr: mute records below ERROR too
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)
            for name, level in saved.items():
                logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def native_quiet() -> Iterator[None]:
    """Swallow what native libraries write straight to the process's stderr (file descriptor 2) for the
    block: log lines of C++ runtimes that bypass Python. Python's own errors still reach the caller."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                yield
            finally:
                ctypes.CDLL(None).fflush(None)  # C stdio may hold their lines still: out while 2 is muted
    finally:
        os.dup2(saved, 2)
        os.close(saved)
