"""The `pe-export` program itself: the Typer app with its root options (--version, --debug), and
`main`, which turns every error into one red line and its exit code."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.markup import escape

from pe_export import __version__
from pe_export.cli.options import flag
from pe_export.cli.output import console, err_console
from pe_export.errors import PeExportError

app = typer.Typer(
    name="pe-export",
    help="Export Meta's Perception Encoder (PE) vision towers to ONNX, precision variants, TensorRT engines and OpenVINO IR.",
    add_completion=False,
    rich_markup_mode="markdown",  # docstring paragraphs are reflowed to the terminal, not broken at their source lines
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    epilog="Exit codes: 0 done; 1 an artifact missed its parity threshold or a check failed; 2 bad input (an "
    "option, a file, a profile, a manifest); 3 something this machine lacks (TensorRT, a GPU, an optional extra); "
    "4 a tool or the environment failed (a full disk, a worker killed for memory, TensorRT unable to parse or "
    "build, Triton stopped); 130 interrupted. A failed command leaves the previous artifact as it was.",
)
# Typer raises click's exceptions, from click itself or from its own copy of click.
ParserError = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


@dataclass
class CliState:
    """What the root options set for the whole run."""

    debug: bool = False


def _version(value: bool) -> None:
    if value:
        console.print(f"pe-export {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    version: Annotated[bool, flag("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, flag("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    """Export PE vision towers (Core, Lang, Spatial) for edge and production runtimes."""
    if isinstance(ctx.obj, CliState):
        ctx.obj.debug = debug


class _Notes(logging.Handler):
    """The library's notices (e.g. space freed from killed runs) as lines of output."""

    def emit(self, record: logging.LogRecord) -> None:
        console.print(f"[dim]note:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI. Every error is one red line and its exit code (a traceback with --debug);
    Ctrl-C exits with 130 (Typer's own handling)."""
    library_log = logging.getLogger("pe_export")
    if not any(isinstance(h, _Notes) for h in library_log.handlers):
        library_log.addHandler(_Notes())
        library_log.setLevel(logging.INFO)
    state = CliState()
    args = list(sys.argv[1:] if argv is None else argv) or ["--help"]
    try:
        code = app(args=args, prog_name="pe-export", obj=state, standalone_mode=False)
    except ParserError as exc:  # bad options: the parser's own message, on one line
        where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
        _error(exc.format_message() + where)
        code = exc.exit_code
    except PeExportError as exc:
        if state.debug:
            raise
        _error(str(exc))
        code = exc.exit_code
    if code == 130:
        _error("interrupted")
    raise SystemExit(code or 0)


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True, highlight=False)
