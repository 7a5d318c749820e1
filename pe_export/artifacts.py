"""Writing artifacts safely: a staging folder beside the destination, then atomic renames.

A failed or interrupted stage leaves the previous good artifact (or nothing) at the final path,
never a truncated file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from pe_export.errors import PeExportError, UsageError

log = logging.getLogger("pe_export")
ROOT = Path("artifacts")  # where artifacts go unless a path is given, below the working directory
NOTHING_TO_REUSE = "nothing to reuse"  # why `reusable` says no when no artifact is there


def prepare_destination(path: Path) -> None:
    """Make sure the destination can be written, before any long work starts; creates nothing."""
    if path.is_dir():
        raise UsageError(f"output path {path} is a folder; give a file name")
    existing = next(p for p in [path.parent, *path.parent.parents] if p.exists())
    if not existing.is_dir():
        raise UsageError(f"cannot create the output folder {path.parent}: {existing} is a file")
    try:  # a real write, since permission bits say nothing to root or on read-only mounts
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        what = f"cannot write to {existing}" if existing == path.parent else f"cannot create the output folder {path.parent}"
        raise UsageError(f"{what}: {exc.strerror}; choose another path with -o") from exc


@contextmanager
def staging(path: Path) -> Iterator[Path]:
    """A scratch folder on the destination's file system, removed whatever happens.

    Its name carries the process id, so that folders left by a killed process (which ran no
    cleanup) are recognised and removed by the next command writing into the same folder. Output
    folders this stage created are removed again when it fails and they stayed empty.
    """
    created = [p for p in [path.parent, *path.parent.parents] if not p.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {path.parent}: {exc.strerror}") from exc
    remove_dead_staging(path.parent)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent))
    try:
        yield folder
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise disk_full(path) from exc
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for empty in created:  # deepest first
            with contextlib.suppress(OSError):
                empty.rmdir()


def disk_full(path: Path) -> PeExportError:
    """The error for a write to `path` that ran out of disk space."""
    free = shutil.disk_usage(path.parent).free / 2**30
    return PeExportError(f"disk full while writing {path} ({free:.1f} GiB free); free space or use -o elsewhere")


def remove_dead_staging(folder: Path) -> None:
    """Remove the staging folders that killed processes left in `folder`, and say how much that freed."""
    freed, count = 0, 0
    for staged in folder.glob(".*.partial"):
        parts = staged.name.removesuffix(".partial").rsplit(".", 2)  # .<artifact>.<pid>.<random>
        pid = parts[1] if len(parts) == 3 else ""
        if staged.is_dir() and pid.isdigit() and not _alive(int(pid)):
            freed += sum(f.stat().st_size for f in staged.rglob("*") if f.is_file() and not f.is_symlink())
            shutil.rmtree(staged, ignore_errors=True)
            count += 1
    if count:
        log.info("removed %d unfinished staging folder%s of killed runs in %s (%.1f MB freed)",
                 count, "" if count == 1 else "s", folder, freed / 1e6)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def publish(staged: list[Path], destination: Path) -> None:
    """Move staged files into the destination folder; the main file (the first) goes last."""
    main, *companions = staged
    for item in companions:
        os.replace(item, destination.parent / item.name)
    os.replace(main, destination)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(paths: list[Path]) -> dict[str, dict]:
    """Size and sha256 of each file, keyed by name: what a manifest pins its artifact to."""
    return {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths}


def load_manifest(artifact: Path) -> dict | None:
    """The artifact's manifest for a reuse decision: None when absent or unreadable (then it is rebuilt)."""
    path = manifest_path(artifact)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def read_manifest(artifact: Path) -> dict | None:
    """The artifact's manifest for reading what it holds: None when there is none, an error when it is corrupt."""
    path = manifest_path(artifact)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot read the manifest {path}: {exc}; delete it and make the artifact again") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path} is not a pe-export manifest; delete it and make the artifact again")
    return data


def files_match(artifact: Path, manifest: dict) -> bool:
    """True when every file the manifest lists is beside the artifact with its recorded size and hash."""
    files = manifest.get("files") or {}
    if artifact.name not in files:
        return False
    for name, expected in files.items():
        path = artifact.parent / name
        if not path.is_file() or path.stat().st_size != expected["bytes"] or file_sha256(path) != expected["sha256"]:
            return False
    return True


def flat_key(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for name, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flat_key(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def reusable(path: Path, key: dict) -> tuple[dict | None, str]:
    """Whether the artifact at `path` was made from exactly `key`: (its manifest, why) when it was,
    (None, why not) when it must be made again.

    `key` is everything the artifact depends on (weights, options, source files' hashes, versions);
    every stage records it in its manifest as "key" and decides reuse with this one comparison. An
    artifact whose files changed since its manifest was written is refused, never silently remade.
    """
    manifest = load_manifest(path)
    if manifest is None:
        return None, NOTHING_TO_REUSE
    recorded = flat_key(manifest.get("key") or {})
    wanted = flat_key(json.loads(json.dumps(key)))  # the form a manifest stores (tuples as lists)
    changed = [name for name in dict.fromkeys([*wanted, *recorded]) if wanted.get(name) != recorded.get(name)]
    if changed:
        return None, f"{', '.join(changed[:4])}{' and more' if len(changed) > 4 else ''} changed"
    if not files_match(path, manifest):
        raise UsageError(f"{path} no longer matches its manifest (changed or incomplete since it was made); "
                         "delete it and its manifest to make it again")
    return manifest, "same key"


def reuse(path: Path, key: dict, progress: Callable[[str], None], remake: str = "making") -> dict | None:
    """`reusable`, said as each stage says it: "reused PATH (same key)" with the manifest returned, else
    None and "<remake> PATH again: why" (nothing said when there was nothing to reuse)."""
    manifest, why = reusable(path, key)
    if manifest is not None:
        progress(f"reused {path} ({why})")
    elif why != NOTHING_TO_REUSE:
        progress(f"{remake} {path} again: {why}")
    return manifest


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")
