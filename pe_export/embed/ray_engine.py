"""The Ray engine: the same job on Ray Data. Images are read, decoded and preprocessed as Ray tasks,
the runner runs in a pool of actors (`map_batches` with a callable class, one runner each), and the
rows come back to this process in source order, which writes the shards as locally.

Without an address a local Ray instance is started for the run and stopped after it; with one
(`auto`, `HOST:PORT`) the run joins that cluster, whose nodes need pe-export and the artifact's path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pe_export.embed.job import EmbedOptions, Rows, Shard, pixels_of, run_batch
from pe_export.embed.output import Failure, ShardResult
from pe_export.embed.sources import ImageFailed, Item

DECODE_CPUS = 0.5


def _decode(row: dict[str, Any], size: int) -> dict[str, Any]:
    """A Ray task: one image's pixels, or zeros and the reason it failed."""
    item = Item(row["id"], row["path"] or None, row["data"] if row["has_data"] else None)
    pixels = pixels_of(item, size)
    failed = isinstance(pixels, ImageFailed)
    return {"shard": row["shard"], "id": row["id"], "error": str(pixels) if failed else "",
            "pixels": np.zeros((3, size, size), np.float32) if failed else pixels}


class _Embedder:
    """A Ray actor: one runner on the artifact, the job's rows out of its outputs."""

    def __init__(self, artifact: str, backend: str | None, threads: int | None, batch: int, rows: Rows, static: bool):
        from pe_export.runners import open_runner

        self.runner = open_runner(Path(artifact), backend=backend, threads=threads)
        self.batch, self.rows, self.static = batch, rows, static

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = batch["error"] == ""
        embeddings = np.zeros((len(ok), *self.rows.shape), np.float32)
        if ok.any():
            embeddings[ok] = self.rows(run_batch(batch["pixels"][ok], self.runner.run, self.batch, self.static))
        return {"shard": batch["shard"], "id": batch["id"], "error": batch["error"], "embedding": embeddings}


def ray_results(shards: list[Shard], artifact: Path, size: int, batch: int, rows: Rows, static: bool,
                options: EmbedOptions) -> Iterator[ShardResult]:
    """Each shard's result, in order, as Ray Data streams them back."""
    import ray

    started = not ray.is_initialized()
    if started:
        logging.getLogger("ray").setLevel(logging.WARNING)  # Ray's own progress lines: pe-export shows its own
        ray.init(address=options.ray_address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # rows come back in source order
        context.enable_progress_bars = False  # pe-export shows its own
        items = [{"shard": s.index, "id": i.id, "path": i.path or "", "data": i.data or b"", "has_data": i.data is not None}
                 for s in shards for i in s.items]
        embedded = (ray.data.from_items(items)
                    # fewer CPUs than the actors ask keeps decoding in tasks of its own, not fused into the actors
                    .map(_decode, fn_kwargs={"size": size}, num_cpus=DECODE_CPUS)
                    .map_batches(_Embedder, batch_size=batch, batch_format="numpy", concurrency=options.workers or 1,
                                 num_gpus=options.gpus_per_worker or None,
                                 fn_constructor_kwargs={"artifact": str(artifact.resolve()), "backend": options.backend,
                                                        "threads": options.threads, "batch": batch, "rows": rows,
                                                        "static": static},
                                 max_restarts=0))  # a lost actor fails the run, which a rerun resumes
        yield from _grouped(iter(embedded.iter_rows()), shards, rows)
    finally:
        if started:
            ray.shutdown()


def _grouped(stream: Iterator[dict[str, Any]], shards: list[Shard], rows: Rows) -> Iterator[ShardResult]:
    """Rows in source order, gathered back into their shards."""
    for shard in shards:
        ids, embeddings, failures = [], [], []
        for _ in shard.items:
            row = next(stream)
            if row["error"]:
                failures.append(Failure(str(row["id"]), str(row["error"])))
            else:
                ids.append(str(row["id"]))
                embeddings.append(np.asarray(row["embedding"]))
        yield ShardResult(shard.index, ids, np.stack(embeddings) if embeddings else np.zeros((0, *rows.shape), np.float32),
                          failures)
