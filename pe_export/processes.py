"""Child processes: ones that never outlive pe-export (a killed parent runs no cleanup, so Linux ends
them), workers that run one job in a fresh interpreter, and a process tree as Linux's /proc shows it."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from pe_export import errors
from pe_export.memory import peak_rss_mb

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """In a child: ask Linux to kill this process when its parent dies. Call it in the child (as a
    Popen preexec_fn, or first thing in a worker's main) with the parent's pid."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


# ---- workers ---------------------------------------------------------------------------------------
# A worker is `python -m MODULE JOB`: a fresh interpreter that imports only what its job needs (never
# the caller's main script), whose memory goes back to the system when it ends, and that dies with
# its parent. Job, results and error travel as files in the job's work folder; progress as stdout lines.

PROGRESS = "pe-export-progress "  # a worker's progress lines on stdout; anything else it prints is dropped
_ERROR = "error.json"  # a worker's pe-export error, raised again in the parent
_PEAK = "peak.json"  # the worker's own peak RSS
_STDERR = "stderr.log"


def run_worker(module: str, job: dict, work: Path, what: str, progress: Callable[[str], None] = lambda line: None,
               env: dict[str, str] | None = None) -> float:
    """Run `python -m MODULE` on `job` (given `parent` and `work`), with `env` added to its environment,
    and wait for it, passing each progress line to `progress`. Its pe-export error is raised here as
    the same kind of error; any other failure as one line naming `what` failed. Interrupted, the
    worker goes with us. Returns the worker's peak RSS in MiB."""
    work = work.resolve()
    job_file = work / "job.json"
    job_file.write_text(json.dumps({**job, "parent": os.getpid(), "work": str(work)}))
    # the worker imports this very package, whichever pe-export its interpreter would find first
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))
    with open(work / _STDERR, "w") as stderr:  # a file, not a pipe: a chatty worker never blocks on it
        worker = subprocess.Popen([sys.executable, "-m", module, str(job_file)], stdout=subprocess.PIPE,
                                  stderr=stderr, text=True, env={**os.environ, **(env or {}), "PYTHONPATH": path})
        try:
            for line in worker.stdout:  # type: ignore[union-attr]
                if line.startswith(PROGRESS):
                    progress(line[len(PROGRESS):].rstrip("\n"))
            code = worker.wait()
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
    if code != 0:
        raise _worker_error(work, what, code)
    return json.loads((work / _PEAK).read_text())["peak_rss_mb"]


def _worker_error(work: Path, what: str, code: int) -> errors.PeExportError:
    if (work / _ERROR).is_file():
        error = json.loads((work / _ERROR).read_text())
        kind = getattr(errors, error["kind"], errors.PeExportError)
        return kind(error["message"])
    if code < 0:  # a signal: SIGKILL most often means the system ran out of memory
        return errors.ToolFailed(f"{what} failed: its worker process was killed by {signal.Signals(-code).name}"
                                    f"{' (out of memory?)' if code == -signal.SIGKILL else ''}")
    lines = (work / _STDERR).read_text(errors="replace").strip().splitlines()
    return errors.ToolFailed(f"{what} failed in its worker process (exit {code}): {lines[-1] if lines else 'no message'}")


def worker_main(job_function: Callable[[dict], None]) -> None:
    """A worker's `__main__`: read the job named on the command line, die with the parent, run the job.
    A pe-export error is left for the parent to raise; so is the worker's peak RSS."""
    job = json.loads(Path(sys.argv[1]).read_text())
    die_with_parent(job["parent"])
    work = Path(job["work"])
    try:
        job_function(job)
    except errors.PeExportError as exc:
        (work / _ERROR).write_text(json.dumps({"kind": type(exc).__name__, "message": str(exc)}))
        sys.exit(1)
    (work / _PEAK).write_text(json.dumps({"peak_rss_mb": round(peak_rss_mb(), 1)}))


def report_progress(*fields: object) -> None:
    """In a worker: one progress line for the parent."""
    print(PROGRESS + " ".join(map(str, fields)), flush=True)


def process_tree(root: int) -> dict[int, int]:
    """`root` and every process descended from it, each with the bytes it holds resident now (Linux:
    read from /proc; a process that ends while it is read is left out)."""
    parents, resident = {}, {}
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        pid = int(status.parent.name)
        parents[pid] = int(fields["PPid"])
        resident[pid] = int(fields.get("VmRSS", "0 kB").split()[0]) * 1024
    tree, grew = {root}, True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return {pid: resident[pid] for pid in tree if pid in resident}
