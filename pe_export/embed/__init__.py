"""`pe-export embed`: a collection of images through an artifact, into Parquet shards that survive kills.

    embed("photos/", Path("artifacts/PE-Core-B16-224/model.onnx"), Path("vectors/"))

The images are preprocessed by pe-export's own function (the one inference, calibration and the
Triton ensemble use), run through the artifact's runner, and written shard by shard (see
`pe_export.embed.output`); a rerun of the same job resumes, skipping finished shards. The engine is
this machine (threads decode ahead of the model) or a Ray cluster (Ray Data: decoding as tasks, one
runner per actor).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.embed.job import EmbedOptions, Rows, Shard, default_batch, rows_for, shards_of
from pe_export.embed.output import ShardResult, finish, locked, start, write_shard
from pe_export.embed.sources import read_source, source_digest
from pe_export.errors import UsageError, require_extra
from pe_export.handoff import MEAN, STD
from pe_export.manifests import GraphManifest
from pe_export.runners import get_backends
from pe_export.validate import artifact_manifest
from pe_export.variants import get_variant

__all__ = ["EmbedOptions", "EmbedResult", "embed"]


@dataclass(frozen=True)
class EmbedResult:
    folder: Path
    manifest: dict[str, Any]
    resumed: int  # shards a previous run had finished
    written: int  # shards this run wrote


def embed(source: str, artifact: Path, out: Path, options: EmbedOptions = EmbedOptions(),
          say: Callable[[str], None] = lambda line: None,
          advance: Callable[[int, int], None] = lambda done, total: None) -> EmbedResult:
    """Embed every image of `source` with `artifact` into `out`; `advance(images done, total)` after
    each shard, `say` for what happens besides."""
    require_extra("embed", "pe-export embed", "pyarrow")
    if options.engine == "ray":
        require_extra("ray", "--engine ray", "ray")
    artifact = Path(artifact)
    manifest = artifact_manifest(artifact)
    artifacts.check_unchanged(artifact, manifest, Digests())
    _check_backend(options.backend, artifact)
    variant = get_variant(manifest.variant)
    rows = rows_for(manifest, variant, options.reduce)
    size = int(manifest.inputs[0].shape[-1])
    items = read_source(source, options.column)
    shards = shards_of(items, options.shard_size)
    key = {"kind": "embed", "artifact": manifest.identity, "source": source_digest(items), "images": len(items),
           "preprocessing": {"size": size, "resize": "bilinear", "mean": MEAN, "std": STD},
           "options": {"reduce": rows.reduce, "dtype": options.dtype, "shard_size": options.shard_size}}
    if manifest.static_batch and options.batch not in (None, manifest.static_batch):
        raise UsageError(f"{artifact.name} takes batches of exactly {manifest.static_batch}; drop --batch or give "
                         f"--batch {manifest.static_batch}")
    batch = options.batch or default_batch(manifest)
    with locked(out):
        finished = set(start(out, key, options.overwrite))
        pending = [s for s in shards if s.index not in finished]
        if finished:
            say(f"resuming: {len(finished)} of {len(shards)} shards already written, {len(pending)} to go")
        done = sum(len(s.items) for s in shards if s.index in finished)
        advance(done, len(items))
        for result in _results(pending, artifact, manifest, size, batch, rows, options):
            write_shard(out, result, options.dtype)
            done += len(shards[result.index].items)
            advance(done, len(items))
        facts = {"artifact": str(artifact.resolve()), "variant": variant.name, "precision": manifest.precision,
                 "output": manifest.options.get("output", variant.default_output), "reduce": rows.reduce,
                 "dims": list(rows.shape), "dtype": options.dtype, "engine": options.engine, "batch": batch}
        written = finish(out, key, facts, len(shards))
    return EmbedResult(out, written, len(finished), len(pending))


def _check_backend(name: str | None, artifact: Path) -> None:
    """Refuse, before any work, a runner backend that is unknown, missing here, or cannot run the artifact."""
    if name is None:
        return
    backend = get_backends([name])[0]
    if not backend.opens(artifact):
        raise UsageError(f"{name} cannot run {artifact.suffix} files ({artifact.name})")
    backend.require()


def _results(pending: list[Shard], artifact: Path, manifest: GraphManifest, size: int, batch: int, rows: Rows,
             options: EmbedOptions) -> Iterator[ShardResult]:
    """The pending shards' results from the chosen engine, in order."""
    if not pending:
        return
    static = manifest.static_batch is not None
    if options.engine == "ray":
        from pe_export.embed.ray_engine import ray_results

        yield from ray_results(pending, artifact, size, batch, rows, static, options)
        return
    from pe_export.embed.local import local_results
    from pe_export.runners import open_runner

    with open_runner(artifact, backend=options.backend, threads=options.threads) as runner:
        yield from local_results(pending, runner.run, size, batch, rows, static, options.workers)
