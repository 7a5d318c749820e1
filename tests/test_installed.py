"""The built wheel, installed in a fresh virtual environment and run from a folder outside the
checkout: the shipped profiles come with it, a small quantize works, and `pe-export serve` run by
its full path from a venv nobody activated serves the artifact."""

from __future__ import annotations

import json
import os
import signal
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SPATIAL = "PE-Spatial-T16-512"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `bin` folder of a fresh venv holding the wheel. Its dependencies are the running
    environment's (a venv or not), added after the venv's own site-packages by a .pth file, so
    nothing is downloaded and the wheel's pe_export comes first."""
    folder = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(folder / "dist")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(folder / "venv")], check=True)
    bin_ = folder / "venv" / "bin"
    own = subprocess.run([bin_ / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    running = list(dict.fromkeys([*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]))
    (Path(own) / "running_environment.pth").write_text(f"import site; list(map(site.addsitedir, {running!r}))\n")
    wheel = next((folder / "dist").glob("pe_export-*.whl"))
    subprocess.run([bin_ / "python", "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True)
    return bin_


def _run(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([installed / "pe-export", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_the_wheel_ships_its_profiles(installed, tmp_path):
    where = subprocess.run([installed / "python", "-c", "import pe_export; print(pe_export.__file__)"], cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert str(installed.parent) in where  # the installed copy, not the checkout
    listed = _run(installed, tmp_path, "profiles", "--json")
    profiles = {p["name"]: p for p in json.loads(listed.stdout)}
    assert listed.returncode == 0 and set(profiles) >= {"pe-lang-l14-datacenter", "pe-lang-l14-cpu-edge",
                                                        "pe-lang-l14-jetson-orin", "pe-lang-g14-datacenter"}
    assert all(p["from"] == "shipped" and str(installed.parent) in p["file"] for p in profiles.values())
    # a shipped profile is found by name from anywhere (it is for L14, so this T16 request is refused)
    refused = _run(installed, tmp_path, "quantize", "-v", SPATIAL, "--random-init", "--precision", "int8",
                   "--profile", "pe-lang-l14-cpu-edge")
    assert refused.returncode == 2 and "profile pe-lang-l14-cpu-edge is for PE-Lang-L14-448" in refused.stderr


def test_a_users_profiles_folder_overrides_a_shipped_file(installed, tmp_path):
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "pe-lang-l14-cpu-edge.yaml").write_text(
        f"name: pe-lang-l14-cpu-edge\nvariant: {SPATIAL}\nexport: {{target: ort}}\n"
        "calibration: {source: synthetic, samples: 4, batch_size: 2}\n")
    listed = {p["name"]: p for p in json.loads(_run(installed, tmp_path, "profiles", "--json").stdout)}
    assert listed["pe-lang-l14-cpu-edge"]["from"] == "./profiles"
    made = _run(installed, tmp_path, "quantize", "-v", SPATIAL, "--random-init", "--precision", "int8",
                "--profile", "pe-lang-l14-cpu-edge")
    assert made.returncode == 0, made.stderr
    assert "token cosine mean" in made.stdout
    assert (tmp_path / "artifacts" / SPATIAL / f"{SPATIAL}.ort.int8.onnx").is_file()


def _serve(installed: Path, artifact: Path, cwd: Path) -> subprocess.Popen:
    """`pe-export serve` by its full path, as a systemd unit or a Docker entrypoint starts it: no venv on PATH."""
    from pe_export.serving.server import free_ports

    http, grpc, metrics = free_ports(3)
    return subprocess.Popen([installed / "pe-export", "serve", str(artifact), "--http-port", str(http), "--grpc-port",
                             str(grpc), "--metrics-port", str(metrics)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={"PATH": "/usr/bin:/bin", "COLUMNS": "200",
                                                                     "HOME": os.environ.get("HOME", "/tmp")})


def test_serve_by_full_path_without_a_venv_on_path_serves_and_answers(installed, tmp_path):
    from pe_export.runners import open_runner
    from pe_export.serving.client import TritonClient
    from pe_export.validate import compare

    made = _run(installed, tmp_path, "onnx", "-v", SPATIAL, "--random-init", "-o", "m.onnx")
    assert made.returncode == 0, made.stderr
    serve = _serve(installed, tmp_path / "m.onnx", tmp_path)
    try:
        lines = [serve.stdout.readline() for _ in range(2)]  # serving ..., HTTP url
        assert lines[0].startswith("serving "), (lines, serve.stderr.read() if serve.poll() is not None else "")
        name, url = lines[0].split()[1], lines[1].split()[-1]
        x = np.random.default_rng(0).standard_normal((1, 3, 512, 512)).astype(np.float32)
        client = TritonClient(url)
        try:
            answer = client.infer(name, "pixel_values", "tokens", x)
        finally:
            client.close()
        with open_runner(tmp_path / "m.onnx", threads=2) as runner:
            assert compare(runner.run(x), answer).cosine_min >= 0.99999
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    finally:
        serve.kill()
