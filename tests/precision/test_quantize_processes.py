"""quantize as processes meet it: killed mid-calibration, two runs on one artifact, and the Python API
from a script read on standard input (the calibration worker never re-runs the caller's script)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from PIL import Image

from pe_export import artifacts
from pe_export.manifests import read_manifest

SPATIAL = "PE-Spatial-T16-512"
CLI = [sys.executable, "-m", "pe_export.cli"]


def _profile(folder: Path, samples: int) -> Path:
    path = folder / "slow.yaml"
    path.write_text(f"name: slow\nvariant: {SPATIAL}\ncalibration: {{source: synthetic, samples: {samples}, batch_size: 1}}\n")
    return path


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc to find the worker process")
def test_killed_quantize_takes_its_worker_along_and_the_next_write_frees_its_staging(tmp_path):
    target = tmp_path / "out" / "m.int8.onnx"
    run = subprocess.Popen([*CLI, "quantize", "-v", SPATIAL, "--random-init", "--precision", "int8",
                            "--profile", str(_profile(tmp_path, 400)), "-o", str(target)],
                           cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for(lambda: _children(run.pid), 240), "the calibration worker never started"
        worker = _children(run.pid)[0]
        time.sleep(1)  # well inside calibration
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert _wait_for(lambda: not _running(worker), 15), "the calibration worker outlived its parent"
    finally:
        run.kill()
    assert not target.exists() and [p.name for p in target.parent.iterdir() if p.name.endswith(".partial")]
    picture = tmp_path / "photo.png"
    Image.new("RGB", (64, 48), (200, 30, 90)).save(picture)
    done = subprocess.run([*CLI, "preprocess", str(picture), "-v", SPATIAL, "--out", str(target.parent / "x.npy")],
                          cwd=tmp_path, capture_output=True, text=True)  # any write into the folder
    assert done.returncode == 0, done.stderr
    assert "removed 1 unfinished staging folder of killed runs" in " ".join(done.stdout.split())
    assert not [p for p in target.parent.iterdir() if p.name.endswith(".partial")]


def test_two_runs_on_one_artifact_and_the_api_from_stdin(tmp_path):
    """The same int8 made at once by the CLI and by a script piped to `python -`: both succeed, and
    what stays is one whole artifact whose files match its manifest."""
    profile = _profile(tmp_path, 8)
    target = tmp_path / "m.int8.onnx"
    script = textwrap.dedent(f"""
        from pe_export.model import ModelSource
        from pe_export.pipeline.commands import quantize_variant
        result = quantize_variant(ModelSource("{SPATIAL}", random_init=True), "int8", profile="{profile}",
                                  output="{target}")
        print("api cosine", result.parity.cosine_mean)
    """)
    api = subprocess.Popen([sys.executable, "-"], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    cli = subprocess.Popen([*CLI, "quantize", "-v", SPATIAL, "--random-init", "--precision", "int8",
                            "--profile", str(profile), "-o", str(target)],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    api_out, api_err = api.communicate(script, timeout=600)
    cli_out, cli_err = cli.communicate(timeout=600)
    assert api.returncode == 0, api_err
    assert cli.returncode == 0, cli_err
    assert float(api_out.split("api cosine")[1]) >= 0.99 and "wrote" in cli_out
    manifest = read_manifest(target)
    assert manifest and artifacts.files_match(target, manifest, artifacts.Digests())
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith((".partial", "-inferred.onnx"))]
    assert os.listdir(tmp_path / "artifacts" / SPATIAL)  # the shared fp32 export survived both
