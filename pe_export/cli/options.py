"""The options several commands share: flags, the model-source options every model command takes
(`model_command`), closed value sets (`Choice`), the one batch syntax, and turning a settings model's
error into one line."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Optional, get_args

import typer

from pe_export.runners.device import Device


def flag(*names: str, **options: object) -> typer.models.OptionInfo:
    """An on/off option, shown in --help as a flag (no value to give)."""
    return typer.Option(*names, metavar="", **options)  # type: ignore[arg-type]


VariantOpt = Annotated[
    str, typer.Option("--variant", "-v", help="Variant name, alias (L14, G14) or timm name; see `pe-export variants`.")
]
CheckpointOpt = Annotated[
    Optional[str],
    typer.Option(
        "--checkpoint",
        "-c",
        help="Weights: a local .pt/.pth/.bin/.safetensors file or hf://owner/repo/file. "
        "Default: the variant's file on the Hugging Face hub (`facebook/<name>`).",
    ),
]
RandomInitOpt = Annotated[bool, flag("--random-init", help="Deterministic random weights (demos, tests).")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for --random-init.")]


def model_command(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the model-source options (--variant, --checkpoint, --random-init, --seed) and
    hand it one `ModelSource` as its `source` parameter (torch is imported only when a command runs).
    The command's own annotations are evaluated in its module: the names they use must be imported there."""
    keyword = inspect.Parameter.KEYWORD_ONLY
    own = [p.replace(kind=keyword, annotation=eval(p.annotation, command.__globals__))  # noqa: S307 - our own annotations
           for p in inspect.signature(command).parameters.values() if p.name != "source"]
    required = [p for p in own if p.default is inspect.Parameter.empty]
    optional = [p for p in own if p.default is not inspect.Parameter.empty]
    parameters = [
        inspect.Parameter("variant", keyword, annotation=VariantOpt), *required,
        inspect.Parameter("checkpoint", keyword, annotation=CheckpointOpt, default=None),
        inspect.Parameter("random_init", keyword, annotation=RandomInitOpt, default=False),
        inspect.Parameter("seed", keyword, annotation=SeedOpt, default=0), *optional,
    ]

    @functools.wraps(command)
    def with_source(*, variant: str, checkpoint: Optional[str] = None, random_init: bool = False, seed: int = 0,
                    **options: object) -> None:
        from pe_export.source import ModelSource

        command(source=ModelSource(variant, checkpoint, random_init, seed), **options)

    del with_source.__wrapped__  # Typer reads the signature below, not the command's
    with_source.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    with_source.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_source


@dataclass(frozen=True)
class Choice:
    """A closed set of option values taken from the library's own table: listed in --help, and
    refused by the parser with the same words the library uses."""

    kind: str
    values: tuple[str, ...]

    def option(self, *names: str, help: str) -> typer.models.OptionInfo:
        return typer.Option(*names, parser=self.parse, metavar=f"[{'|'.join(self.values)}]", help=help)

    def parse(self, value: str) -> str:
        if value not in self.values:
            raise typer.BadParameter(f"unknown {self.kind} {value!r}; choose one of: {', '.join(self.values)}")
        return value


DEVICE = Choice("device", tuple(get_args(Device)))

BATCH_SYNTAX = "N, a list N,N,N or a range MIN:OPT:MAX"


def batch_sizes(value: str) -> tuple[list[int], bool]:
    """The one batch syntax of every command: N, N,N,N or MIN:OPT:MAX; (sizes, given as a range)."""
    ranged = ":" in value
    parts = [p.strip() for p in value.split(":" if ranged else ",")]
    if not all(p.isdigit() and int(p) > 0 for p in parts) or (ranged and len(parts) != 3):
        raise typer.BadParameter(f"{value!r}: batch sizes must be positive numbers, as {BATCH_SYNTAX}")
    return [int(p) for p in parts], ranged


def bench_sizes(value: str) -> list[int]:
    """Every batch size the value names, sorted, once each (a range gives its three sizes)."""
    return sorted(set(batch_sizes(value)[0]))


def csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def first_error(exc: Exception) -> str:
    """A settings model's first complaint as `field: message` (pydantic), else the exception's text."""
    errors = getattr(exc, "errors", None)
    if callable(errors):
        first = errors()[0]
        return f"{'.'.join(map(str, first['loc']))}: {first['msg'].removeprefix('Value error, ')}"
    return str(exc)
