"""pyright over the TensorRT code against TensorRT 10.13's typed Python API (the `tensorrt-stubs` wheel),
so that a call TensorRT does not have fails here, without TensorRT or a GPU.

The stubs are never installed (the wheel depends on the real `tensorrt`, and a bare `tensorrt`
folder on the path would make `import tensorrt` succeed): the wheel is downloaded and unpacked into
a cache folder that only pyright is pointed at. pyright comes from npm into the same cache. Both are
fetched once, with a time limit; where node, npm or the network cannot provide them, the tests skip
and say which.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYRIGHT = "1.1.414"
STUBS = ("tensorrt-stubs", "10.13.0.35.1")
CHECKED = ["pe_export/trt", "pe_export/runners/tensorrt.py", "pe_export/runners/tensorrt_env.py",
           "pe_export/runners/device_memory.py"]
CACHE = Path(os.environ.get("PE_EXPORT_TOOL_CACHE") or Path.home() / ".cache" / "pe-export-tests")


def _fetch(command: list[str], what: str, timeout: int) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot get {what}: {exc}")
    if done.returncode:
        pytest.skip(f"cannot get {what} ({' '.join(command[:3])} exited {done.returncode}): {done.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def pyright() -> Path:
    """pyright PYRIGHT, installed from npm into the cache on first use."""
    prefix = CACHE / f"pyright-{PYRIGHT}"
    program = prefix / "bin" / "pyright"
    if not shutil.which("node"):
        pytest.skip("node is not installed: pyright runs on node")
    if not program.is_file():
        if not shutil.which("npm"):
            pytest.skip("npm is not installed: it brings pyright")
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            _fetch(["npm", "install", "--global", "--prefix", scratch, "--no-audit", "--no-fund", f"pyright@{PYRIGHT}"],
                   f"pyright {PYRIGHT} from npm", timeout=300)
            Path(scratch).replace(prefix)
    return program


@pytest.fixture(scope="module")
def stubs() -> Path:
    """The tensorrt-stubs wheel unpacked into the cache (downloaded, never installed)."""
    folder = CACHE / f"{STUBS[0]}-{STUBS[1]}"
    if not (folder / "tensorrt" / "__init__.pyi").is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            _fetch([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
                    f"{STUBS[0]}=={STUBS[1]}", "-d", scratch], f"{STUBS[0]} {STUBS[1]} from PyPI", timeout=300)
            unpacked = Path(scratch) / "unpacked"
            for wheel in Path(scratch).glob("*.whl"):
                zipfile.ZipFile(wheel).extractall(unpacked)
            unpacked.replace(folder)
    return folder


def _errors(pyright: Path, stubs: Path, root: Path, tmp_path: Path) -> list[dict]:
    """pyright's errors over CHECKED in `root`, with the stubs on its stub path."""
    config = tmp_path / "pyrightconfig.json"
    config.write_text(json.dumps({
        "stubPath": str(stubs), "extraPaths": [str(root)], "typeCheckingMode": "standard",
        "pythonVersion": f"{sys.version_info.major}.{sys.version_info.minor}",
        "reportMissingModuleSource": "none",  # the stubs come without the module, on purpose
    }))
    done = subprocess.run([str(pyright), "-p", str(config), "--pythonpath", sys.executable, "--outputjson", *CHECKED],
                          cwd=root, capture_output=True, text=True, timeout=600)
    report = json.loads(done.stdout)
    assert report["summary"]["filesAnalyzed"] >= len(CHECKED)
    return [d for d in report["generalDiagnostics"] if d["severity"] == "error"]


def test_pyright_passes_on_the_tensorrt_code(pyright, stubs, tmp_path):
    errors = _errors(pyright, stubs, ROOT, tmp_path)
    assert errors == [], "\n".join(f"{e['file']}:{e['range']['start']['line'] + 1}: {e['message']}" for e in errors)


PLANTED = [  # (file, what the code says, a misuse of TensorRT's API, what pyright must say)
    ("pe_export/trt/timing_cache.py", "config.set_timing_cache(cache, False)", "config.set_timing_cashe(cache, False)",
     'Cannot access attribute "set_timing_cashe" for class "IBuilderConfig"'),
    ("pe_export/trt/build.py", "trt.BuilderFlag.TF32", "trt.BuilderFlag.TF33", 'Cannot access attribute "TF33"'),
    ("pe_export/runners/tensorrt.py", "self.context.execute_async_v3(self.memory.stream)",
     "self.context.execute_async_v2(self.memory.stream)", 'Cannot access attribute "execute_async_v2" for class "IExecutionContext"'),
    ("pe_export/runners/tensorrt.py", "engine.get_tensor_profile_shape(self.input_name, 0)",
     "engine.get_tensor_profile_shape(self.input_name)", 'Argument missing for parameter "profile_index"'),
]


def test_pyright_fails_on_a_planted_misuse(pyright, stubs, tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(ROOT / "pe_export", copy / "pe_export", ignore=shutil.ignore_patterns("__pycache__"))
    for file, code, misuse, _ in PLANTED:
        path = copy / file
        assert code in path.read_text(), f"{file} no longer says {code!r}: update the planted misuse"
        path.write_text(path.read_text().replace(code, misuse, 1))
    errors = _errors(pyright, stubs, copy, tmp_path)
    found = {(Path(e["file"]).relative_to(copy).as_posix(), e["message"].splitlines()[0]) for e in errors}
    for file, _, _, message in PLANTED:
        assert any(f == file and message in m for f, m in found), f"pyright missed the misuse in {file}: {sorted(found)}"
    assert len(errors) == len(PLANTED)
