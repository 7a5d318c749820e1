"""`pe-export openvino` as processes meet it: the command's own process never imports torch (a worker
does the torch half, another OpenVINO's), and a killed or interrupted export takes its workers along
and leaves no artifact; the next run removes what a killed one staged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pe_export.processes import process_tree

SPATIAL = "PE-Spatial-T16-512"
CLI = [sys.executable, "-m", "pe_export.cli"]
pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc to find the worker processes")


def test_the_exporting_process_never_imports_torch(fixtures, tmp_path):
    checkpoint = fixtures.checkpoint(SPATIAL)
    script = textwrap.dedent(f'''
        import json, sys
        sys.modules["torch"] = None  # any import of torch in this process fails
        from pathlib import Path
        from pe_export.pipeline.commands import openvino_variant
        from pe_export.source import ModelSource
        result = openvino_variant(ModelSource("{SPATIAL}", "{checkpoint}"), "fp32", output=Path("out/m.xml"))
        print(json.dumps(result.manifest.dump()))
    ''')
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads(done.stdout.splitlines()[-1])
    assert manifest["parity"]["cosine_mean"] >= 0.99999 and manifest["parity"]["passed"] is True
    assert manifest["weights"]["checkpoint"] == str(checkpoint) and len(manifest["weights"]["sha256"]) == 64
    assert manifest["versions"]["torch"]  # recorded from package metadata, not imported
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.bin", "m.xml", "m.xml.json"]


def _worker(parent: int, job: str, seconds: float = 300) -> int:
    """The pid of the parent's worker running `job` (the torch reference or the ir), once it has started."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid in process_tree(parent):
            try:
                command = Path(f"/proc/{pid}/cmdline").read_text().split("\0")
                workers = ("pe_export.pipeline.worker", "pe_export.openvino.worker")
                if any(w in command for w in workers) and json.loads(Path(command[-2]).read_text())["job"] == job:
                    return pid
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.1)
    raise AssertionError(f"no {job} worker started")


def _gone(pid: int, seconds: float = 15) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True
        except OSError:
            return True
        time.sleep(0.1)
    return False


def _export(folder: Path, **popen) -> subprocess.Popen:
    return subprocess.Popen([*CLI, "openvino", "-v", SPATIAL, "--random-init", "--precision", "fp32", "-o", "out/m.xml"],
                            cwd=folder, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **popen)


def test_a_killed_export_takes_its_worker_along_and_the_next_run_removes_its_staging(tmp_path):
    run = _export(tmp_path)
    try:
        worker = _worker(run.pid, "reference")
        run.kill()
        run.wait()
        assert _gone(worker), "the torch worker outlived its parent"
    finally:
        run.kill()
    assert [p.name.startswith(".m.xml.") and p.name.endswith(".partial") for p in (tmp_path / "out").iterdir()] == [True]
    done = _export(tmp_path)
    assert done.wait(timeout=600) == 0, done.stderr.read()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["m.bin", "m.xml", "m.xml.json"]


def test_ctrl_c_during_the_conversion_stops_both_processes_and_writes_nothing(tmp_path, interruptible):
    run = _export(tmp_path, **interruptible)
    try:
        worker = _worker(run.pid, "ir")
        os.killpg(run.pid, signal.SIGINT)  # as a terminal sends it: to the whole process group
        _, err = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 130 and err.strip() == "error: interrupted"
    assert _gone(worker)
    assert not (tmp_path / "out").exists()
