"""Writing artifacts safely: a staging folder beside the destination, then atomic renames.

A failed or interrupted stage leaves the previous good artifact (or nothing) at the final path,
never a truncated file.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pe_export.errors import PeExportError, UsageError


def prepare_destination(path: Path) -> None:
    """Create the destination folder and make sure it can be written, before any long work starts."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the output folder {path.parent}: {exc.strerror}") from exc
    if path.is_dir():
        raise UsageError(f"output path {path} is a folder; give a file name")
    try:  # a real write, since permission bits say nothing to root or on read-only mounts
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write to {path.parent}: {exc.strerror}; choose another path with -o") from exc


@contextmanager
def staging(path: Path) -> Iterator[Path]:
    """A scratch folder on the destination's file system, removed whatever happens.

    Its name carries the process id, so that folders left by a killed process (which ran no
    cleanup) are recognised and removed by the next stage writing the same artifact.
    """
    _remove_orphaned_staging(path)
    folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".partial", dir=path.parent))
    try:
        yield folder
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            free = shutil.disk_usage(path.parent).free / 2**30
            raise PeExportError(f"disk full while writing {path} ({free:.1f} GiB free); free space or use -o elsewhere") from exc
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _remove_orphaned_staging(path: Path) -> None:
    for folder in path.parent.glob(f".{glob.escape(path.name)}.*.partial"):
        pid = folder.name[len(path.name) + 2:].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


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


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def manifest_path(artifact: Path) -> Path:
    return artifact.with_name(artifact.name + ".json")
