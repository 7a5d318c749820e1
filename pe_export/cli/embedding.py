"""`embed`: a collection of images through an artifact, into Parquet shards, here or on a Ray cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from pe_export.cli.options import Choice, first_error, flag
from pe_export.cli.output import console
from pe_export.errors import UsageError

REDUCE = Choice("reduction", ("mean", "cls", "none"))
DTYPE = Choice("dtype", ("float32", "float16"))
ENGINE = Choice("engine", ("local", "ray"))


def embed(
    source: Annotated[str, typer.Argument(help="A folder of images, a glob ('photos/**/*.jpg'), a text file of "
                                          "paths, or a Parquet file with a column of paths or image bytes.")],
    artifact: Annotated[Path, typer.Option("--artifact", "-a", help="An artifact pe-export made: ONNX of any "
                                           "precision, a TensorRT engine, an OpenVINO IR.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The folder for the Parquet shards and _embed.json.")],
    reduce: Annotated[Optional[str], REDUCE.option("--reduce", help="Token outputs: mean over the patch tokens "
                                                   "(default), the class token, or none (the token matrix).")] = None,
    dtype: Annotated[str, DTYPE.option("--dtype", help="The stored embeddings' type.")] = "float32",
    batch: Annotated[Optional[int], typer.Option("--batch", "-b", min=1, help="Images per run; default: the "
                                                 "artifact's (static batch, engine or profile), else 8.")] = None,
    shard_size: Annotated[int, typer.Option("--shard-size", min=1, help="Images per Parquet shard: a killed run "
                                            "redoes at most the shards in flight.")] = 1024,
    column: Annotated[Optional[str], typer.Option("--column", help="Parquet sources: the column of paths or "
                                                  "image bytes (default: path, image, bytes, ...).")] = None,
    engine: Annotated[str, ENGINE.option("--engine", help="local: this machine, decoding in threads ahead of the "
                                         "model; ray: Ray Data (pip install 'pe-export[ray]').")] = "local",
    workers: Annotated[Optional[int], typer.Option("--workers", "-w", min=1, help="local: decoding threads "
                                                   "(default: one per core); ray: runner actors (default 1).")] = None,
    gpus_per_worker: Annotated[float, typer.Option("--gpus-per-worker", min=0, help="ray: GPUs each runner "
                                                   "actor holds (engines need 1).")] = 0,
    ray_address: Annotated[Optional[str], typer.Option("--ray-address", help="ray: 'auto' or HOST:PORT of a "
                                                       "running cluster; default: a local Ray started for this run.")] = None,
    backend: Annotated[Optional[str], typer.Option("--backend", help="The runner (onnxruntime, onnxruntime-cuda, "
                                                   "openvino, tensorrt); default: the artifact type's.")] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", min=1, help="The runner's CPU threads.")] = None,
    overwrite: Annotated[bool, flag("--overwrite", help="Replace another job's output in --out.")] = False,
) -> None:
    """Embed every image of SOURCE with an artifact, into Parquet shards that a rerun resumes.

    Each shard (`part-00000.parquet`: `id`, `embedding`) appears whole or not at all; rerun the same
    command after a crash or Ctrl-C and finished shards are kept. Images that cannot be read are
    skipped and listed with their reason in `_embed.json`. Preprocessing is pe-export's own, as at
    inference.

    Examples:

        pe-export embed photos/ -a artifacts/PE-Core-B16-224/PE-Core-B16-224.onnx -o vectors/

        pe-export embed images.parquet --column jpg -a model.int8.onnx -o vectors/ --engine ray --workers 4
    """
    from pydantic import ValidationError

    from pe_export.embed import EmbedOptions, embed as run_embed

    try:
        options = EmbedOptions(reduce=reduce, dtype=dtype, batch=batch, shard_size=shard_size, column=column,
                               engine=engine, workers=workers, gpus_per_worker=gpus_per_worker,
                               ray_address=ray_address, backend=backend, threads=threads, overwrite=overwrite)
    except ValidationError as exc:
        raise UsageError(f"bad embed options: {first_error(exc)}") from None
    bar = Progress(TextColumn("embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
                   TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal)
    with bar:
        task = bar.add_task("embedding", total=None, rate="")

        def advance(done: int, total: int) -> None:
            elapsed = bar.tasks[0].elapsed or 0
            bar.update(task, completed=done, total=total, rate=f"{done / elapsed:.1f} img/s" if elapsed and done else "")
            if not console.is_terminal and done:
                console.print(f"embedded {done}/{total} images")

        result = run_embed(source, artifact, out, options, say=lambda line: console.print(line, soft_wrap=True),
                           advance=advance)
    counts = result.manifest["counts"]
    console.print(f"wrote {result.written} shard(s) to {out} ({result.resumed} kept from an earlier run): "
                  f"{counts['embedded']} embedded, {counts['failed']} skipped, "
                  f"dims {result.manifest['dims']} {result.manifest['dtype']}", soft_wrap=True)
    for failure in result.manifest["failed"][:5]:
        console.print(f"[yellow]skipped[/] {escape(failure['id'])}: {escape(failure['reason'])}", highlight=False,
                      soft_wrap=True)
    if counts["failed"] > 5:
        console.print(f"... and {counts['failed'] - 5} more, listed in {out / '_embed.json'}", soft_wrap=True)
