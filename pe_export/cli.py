"""The `pe-export` command line: parses options, calls one library function, prints with rich."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from pe_export import __version__
from pe_export.errors import PeExportError

app = typer.Typer(
    name="pe-export",
    help="Export Meta's Perception Encoder (PE) vision towers to ONNX, precision variants and TensorRT engines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

VariantOpt = Annotated[
    str, typer.Option("--variant", "-v", help="Variant name, alias (L14, G14) or timm name; see `pe-export variants`.")
]
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option(
        "--checkpoint",
        "-c",
        help="Weights: a local .pt/.pth/.bin/.safetensors file or hf://owner/repo/file. "
        "Default: the variant's file on the Hugging Face hub (facebook/<name>).",
    ),
]
RandomInitOpt = Annotated[bool, typer.Option("--random-init", help="Deterministic random weights (demos, tests).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --random-init.")]


def _version(value: bool) -> None:
    if value:
        console.print(f"pe-export {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    """Export PE vision towers (Core, Lang, Spatial) for edge and production runtimes."""


@app.command()
def variants() -> None:
    """List every PE vision variant with its size and cost."""
    from pe_export.variants import VARIANTS

    table = Table(title="PE vision variants")
    for column in ("name", "alias", "family", "image", "patch", "tokens", "width", "layers", "heads"):
        table.add_column(column, justify="left" if column in ("name", "alias", "family") else "right")
    for column in ("parameters", "GMACs", "default output"):
        table.add_column(column, justify="right")
    for v in VARIANTS:
        table.add_row(
            v.name, v.alias or "", v.family, str(v.image_size), str(v.patch_size), str(v.tokens), str(v.width),
            str(v.layers), str(v.heads), f"{v.parameters:,}", f"{v.gmacs:.1f}", v.default_output,
        )
    console.print(table)


@app.command()
def info(
    variant: VariantOpt,
    checkpoint: CheckpointOpt = None,
    random_init: RandomInitOpt = False,
    seed: SeedOpt = 0,
) -> None:
    """Load a variant's weights with a strict key check and show its configuration.

    Example: pe-export info --variant L14 --checkpoint PE-Lang-L14-448.pt
    """
    from pe_export.info import describe

    _require_one_source(checkpoint, random_init)
    result = describe(variant, checkpoint, random_init=random_init, seed=seed)
    table = Table(show_header=False, title=result.variant.name)
    table.add_column(style="bold")
    table.add_column()
    for key, value in result.rows():
        table.add_row(key, value)
    console.print(table)


def _require_one_source(checkpoint: Optional[str], random_init: bool) -> None:
    from pe_export.errors import UsageError

    if checkpoint and random_init:
        raise UsageError("give either --checkpoint or --random-init, not both")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; library errors become one red line and their exit code (a traceback with --debug)."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        app(args=args, prog_name="pe-export")
    except PeExportError as exc:
        if "--debug" in args:
            raise
        err_console.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise SystemExit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print("[bold red]interrupted[/]")
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
