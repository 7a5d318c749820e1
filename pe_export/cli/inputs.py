"""`preprocess`: an image or a video as the exact tensor a variant's artifacts take."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pe_export.cli.options import VariantOpt
from pe_export.cli.output import console


def preprocess(
    file: Annotated[Path, typer.Argument(help="An image, or (PLM) a video: .mp4, .mov, .mkv, .webm, .avi, .m4v.")],
    variant: VariantOpt,
    output: Annotated[Path, typer.Option("--out", "-o", help="The .npy file to write: pixel_values [N, 3, S, S] float32.")],
) -> None:
    """Write the input a variant's artifacts take for an image or a video, and say how it was cut.

    For PLM-1B/3B/8B, an image gives PerceptionLM's thumbnail then its tiles (at most 36, row by row),
    and a video its frames (1 per second, at most 32); the tokens printed are the image tokens the
    prompt holds for it. Any other variant gets its one resized image.

    Examples:

        pe-export preprocess photo.jpg --variant PLM-3B --out tiles.npy

        pe-export preprocess clip.mp4 --variant PLM-3B --out frames.npy   (needs pe-export[video])
    """
    from pe_export.model.inputs import preprocess_file

    prepared = preprocess_file(file, variant, output)
    shape = "x".join(map(str, prepared.pixel_values.shape))
    console.print(f"{file.name}: {prepared.describe()}; wrote {output} ({shape} float32)")
