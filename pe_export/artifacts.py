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

from pe_export.errors import ToolFailed, UsageError
from pe_export.manifests import FileDigest, Manifest, ManifestProblem, identity, manifest_path, parse

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


def disk_full(path: Path) -> ToolFailed:
    """The error for a write to `path` that ran out of disk space."""
    free = shutil.disk_usage(path.parent).free / 2**30
    return ToolFailed(f"disk full while writing {path} ({free:.1f} GiB free); free space or use -o elsewhere")


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


class Digests:
    """The sha256 of files, each read once in this object's life (one command's plan).

    Keyed by the file's device, inode, size and modification time, so a second look at an unchanged
    file, a hard link to it, or a staged file after its rename into place costs nothing; a write to a
    file moves its modification time and so its key (pe-export never rewrites a file within the clock
    tick it hashed it in). `derived` keeps digests of what files hold the same way. `hashed_bytes` counts
    the bytes read.
    """

    def __init__(self, known: dict[str, str] | None = None):
        self._known: dict[tuple, str] = {tuple(json.loads(k)): v for k, v in (known or {}).items()}
        self.hashed_bytes = 0

    @staticmethod
    def _stamp(path: Path) -> tuple[int, ...]:
        stat = path.stat()
        return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns

    def derived(self, paths: list[Path], compute: Callable[[], tuple[str, int]]) -> str:
        """A digest of what several files hold rather than of their bytes (a checkpoint's weights), computed
        once per set of unchanged files: `compute` gives it and the bytes it read."""
        stamp = ("derived", *(n for path in paths for n in self._stamp(path)))
        if stamp not in self._known:
            self._known[stamp], read = compute()
            self.hashed_bytes += read
        return self._known[stamp]

    def sha256(self, path: Path) -> str:
        stamp = self._stamp(path)
        if stamp not in self._known:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 24), b""):
                    digest.update(chunk)
            self._known[stamp] = digest.hexdigest()
            self.hashed_bytes += stamp[2]  # the size
        return self._known[stamp]

    def files(self, paths: list[Path], root: Path | None = None) -> dict[str, FileDigest]:
        """Size and sha256 of each file, keyed by name (its path below `root`, if given): what a manifest
        pins its artifact to."""
        return {(p.relative_to(root).as_posix() if root else p.name): FileDigest(bytes=p.stat().st_size,
                                                                                  sha256=self.sha256(p))
                for p in paths}

    def known(self) -> dict[str, str]:
        """What this object has computed, as JSON for a worker process to start from."""
        return {json.dumps(stamp): sha for stamp, sha in self._known.items()}


def files_match(artifact: Path, manifest: Manifest, digests: Digests) -> bool:
    """True when every file the manifest lists is beside the artifact with its recorded size and hash."""
    if artifact.name not in manifest.files:
        return False
    for name, expected in manifest.files.items():
        path = artifact.parent / name
        if not path.is_file() or path.stat().st_size != expected.bytes or digests.sha256(path) != expected.sha256:
            return False
    return True


def check_unchanged(artifact: Path, manifest: Manifest, digests: Digests) -> None:
    """Refuse an artifact whose files no longer match its manifest, before a stage uses it."""
    if not files_match(artifact, manifest, digests):
        raise UsageError(f"{artifact} no longer matches its manifest (changed or incomplete since it was made); "
                         "make it again with pe-export")


def flat_key(data: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for name, value in data.items():
        if isinstance(value, dict) and value:
            flat.update(flat_key(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def reusable(path: Path, key: dict, digests: Digests) -> tuple[Manifest | None, str]:
    """Whether the artifact at `path` was made from exactly `key`: (its manifest, why) when it was,
    (None, why not) when it must be made again.

    `key` is everything the artifact depends on (weights, options, its upstream's identity, versions);
    every stage records it in its manifest and decides reuse with this one comparison. A manifest of
    an older pe-export (no identity) is never reused. An artifact whose files changed since its
    manifest was written is refused, never silently remade.
    """
    recorded_at = manifest_path(path)
    if not recorded_at.is_file():
        return None, NOTHING_TO_REUSE
    try:
        manifest = parse(recorded_at)
    except ManifestProblem as exc:
        return None, str(exc)
    recorded = flat_key(manifest.key)
    wanted = flat_key(json.loads(json.dumps(key)))  # the form a manifest stores (tuples as lists)
    changed = [name for name in dict.fromkeys([*wanted, *recorded]) if wanted.get(name) != recorded.get(name)]
    if changed:
        return None, f"{', '.join(changed[:4])}{' and more' if len(changed) > 4 else ''} changed"
    if not files_match(path, manifest, digests):
        raise UsageError(f"{path} no longer matches its manifest (changed or incomplete since it was made); "
                         "delete it and its manifest to make it again")
    if identity(manifest.key, manifest.files) != manifest.identity:
        return None, "its recorded identity is not that of its key and files"
    return manifest, "same key"


def reuse(path: Path, key: dict, digests: Digests, progress: Callable[[str], None],
          remake: str = "making") -> Manifest | None:
    """`reusable`, said as each stage says it: "reused PATH (same key)" with the manifest returned, else
    None and "<remake> PATH again: why" (nothing said when there was nothing to reuse)."""
    manifest, why = reusable(path, key, digests)
    say_reuse(path, manifest is not None, why, progress, remake)
    return manifest


def say_reuse(path: Path, reused: bool, why: str, progress: Callable[[str], None], remake: str = "making") -> None:
    if reused:
        progress(f"reused {path} ({why})")
    elif why != NOTHING_TO_REUSE:
        progress(f"{remake} {path} again: {why}")


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


