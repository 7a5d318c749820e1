"""What there is to work with: `variants`, `info` (one variant's weights) and `profiles`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from rich.table import Table

from pe_export.cli.options import flag, model_command
from pe_export.cli.output import console, print_table

if TYPE_CHECKING:
    from pe_export.source import ModelSource

JsonOpt = Annotated[bool, flag("--json", help="Print the data as JSON.")]


def variants(as_json: JsonOpt = False) -> None:
    """List every PE vision variant with its size and cost.

    Example: pe-export variants --json
    """
    from pe_export.variants import VARIANTS

    records = [{"name": v.name, "alias": v.alias or "", "family": v.family, "image": v.image_size,
                "patch": v.patch_size, "tokens": v.tokens, "width": v.width, "layers": v.layers, "heads": v.heads,
                "parameters": v.parameters, "GMACs": round(v.gmacs, 1), "default output": v.default_output}
               for v in VARIANTS]
    print_table("PE vision variants", records, as_json, {"parameters": "{:,}".format})


@model_command
def info(source: ModelSource) -> None:
    """Load a variant's weights with a strict key check and show its configuration.

    Example: pe-export info --variant L14 --checkpoint PE-Lang-L14-448.pt
    """
    from pe_export.model.info import describe

    result = describe(source)
    table = Table(show_header=False, title=result.variant.name)
    table.add_column(style="bold")
    table.add_column()
    for key, value in result.rows():
        table.add_row(key, value)
    console.print(table)


def profiles(as_json: JsonOpt = False) -> None:
    """List the calibration profiles with their variant, target, precisions and where each comes from
    (shipped with pe-export, or a ./profiles folder that overrides a shipped file of the same name)."""
    from pe_export.precision.profiles import load_profile, profile_sources

    records = []
    for path, origin in profile_sources():
        p = load_profile(path)
        records.append({"name": p.name, "variant": p.variant, "target": p.export.target,
                        "batch": [p.batch.min, p.batch.opt, p.batch.max], "precisions": p.precisions,
                        "deploys": f"{p.deploy.runtime} {p.deploy.precision}" if p.deploy else "",
                        "from": origin, "file": str(path)})
    print_table("profiles", records, as_json, {"batch": lambda b: "/".join(map(str, b)), "precisions": ", ".join})
