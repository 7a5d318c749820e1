"""The built wheel, installed in a fresh virtual environment and run from a folder outside the
checkout: the shipped profiles come with it and a small quantize works."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPATIAL = "PE-Spatial-T16-512"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The `bin` folder of a fresh venv holding the wheel (heavy dependencies come from this
    interpreter's site-packages, so nothing is downloaded)."""
    folder = tmp_path_factory.mktemp("installed")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT),
                    "-w", str(folder / "dist")], check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(folder / "venv")], check=True)
    bin_ = folder / "venv" / "bin"
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
