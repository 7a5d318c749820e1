"""The folder `embed` writes: Parquet shards and the manifest that names the job.

    DIR/_embed.json         the job's key (artifact identity, source, options), then its counts
    DIR/part-00000.parquet  `id` and `embedding`, one row per image embedded, in source order

A shard appears whole or not at all (written beside, then renamed), and it carries the images it
skipped and why in its Parquet metadata, so a finished shard is never redone and a killed run loses
at most the shards in flight. One run at a time writes a folder (a lock beside the shards).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from pe_export.artifacts import flat_key
from pe_export.errors import UsageError

MANIFEST = "_embed.json"  # "_" first: readers of the folder as a Parquet dataset skip it
SCHEMA = "pe-export/embed/1"
FAILED_KEY = b"pe_export.failed"


@dataclass(frozen=True)
class Failure:
    id: str
    reason: str


@dataclass(frozen=True)
class ShardResult:
    """One shard's output: the ids embedded, their embeddings (rows in the same order) and the failures."""

    index: int
    ids: list[str]
    embeddings: np.ndarray
    failures: list[Failure]


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"part-{index:05d}.parquet"


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    """Hold the folder for this run; a second run on it is refused while the first is alive."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / ".embed.lock", "a+")
    except OSError as exc:
        raise UsageError(f"cannot write to {folder}: {exc.strerror}; choose another --out") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(f"another pe-export embed is writing {folder}; wait for it or choose another --out") from None
        for stale in folder.glob(".*.partial"):  # left by a killed run; the lock says none is running
            stale.unlink()
        yield


def start(folder: Path, key: dict[str, Any], overwrite: bool) -> list[int]:
    """Begin (or resume) the job in `folder`: the shards already finished for this very key. A folder
    holding another job's output is refused unless `overwrite`, which clears it first."""
    manifest = folder / MANIFEST
    recorded, wanted = _read_manifest(manifest), json.loads(json.dumps(key))
    same = recorded is not None and recorded.get("key") == wanted
    if not same and (recorded is not None or any(folder.glob("part-*.parquet"))) and not overwrite:
        mine, theirs = flat_key(wanted), flat_key((recorded or {}).get("key", {}))
        changed = sorted(k for k in {**mine, **theirs} if mine.get(k) != theirs.get(k)) if theirs else []
        raise UsageError(f"{folder} holds other output ({', '.join(changed) + ' differ' if changed else 'not this job'}); "
                         "give another --out, or --overwrite to replace it")
    if not same:
        for old in [*folder.glob("part-*.parquet"), manifest]:
            old.unlink(missing_ok=True)
        _write_json(manifest, {"schema": SCHEMA, "key": key, "complete": False})
    return sorted(int(p.stem.removeprefix("part-")) for p in folder.glob("part-*.parquet"))


def write_shard(folder: Path, result: ShardResult, dtype: str) -> Path:
    """Write one shard atomically: a partial file beside it, then one rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    values = result.embeddings.astype(dtype)
    column = pa.array(values.reshape(-1))
    for size in reversed(values.shape[1:]):  # [D] or [tokens, width]: nested fixed-size lists
        column = pa.FixedSizeListArray.from_arrays(column, size)
    table = pa.table({"id": pa.array(result.ids, pa.string()), "embedding": column})
    failed = json.dumps([f.__dict__ for f in result.failures]).encode()
    table = table.replace_schema_metadata({FAILED_KEY: failed})
    final = shard_path(folder, result.index)
    partial = folder / f".{final.name}.{os.getpid()}.partial"
    pq.write_table(table, partial)
    os.replace(partial, final)
    return final


def shard_failures(path: Path) -> list[Failure]:
    import pyarrow.parquet as pq

    metadata = pq.read_schema(path).metadata or {}
    return [Failure(**f) for f in json.loads(metadata.get(FAILED_KEY, b"[]"))]


def shard_rows(path: Path) -> int:
    import pyarrow.parquet as pq

    return pq.read_metadata(path).num_rows


def finish(folder: Path, key: dict[str, Any], facts: dict[str, Any], shards: int) -> dict[str, Any]:
    """Rewrite the manifest with the job's counts and failures, read back from its shards."""
    paths = [shard_path(folder, i) for i in range(shards)]
    failures = [f for p in paths for f in shard_failures(p)]
    rows = sum(shard_rows(p) for p in paths)
    manifest = {"schema": SCHEMA, "key": key, "complete": True, **facts,
                "counts": {"images": rows + len(failures), "embedded": rows, "failed": len(failures)},
                "shards": [p.name for p in paths], "failed": [f.__dict__ for f in failures]}
    _write_json(folder / MANIFEST, manifest)
    return manifest


def _read_manifest(path: Path) -> Optional[dict[str, Any]]:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # unreadable: another job's as far as resuming goes
    return data if isinstance(data, dict) and data.get("schema") == SCHEMA else {}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(partial, path)
