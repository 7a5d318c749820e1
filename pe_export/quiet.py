"""Silencing third-party tools that narrate on stdout/stderr; the CLI shows its own progress."""

from __future__ import annotations

import contextlib
import io
import logging
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
