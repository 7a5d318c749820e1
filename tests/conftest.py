"""Shared test set-up: the reference fixtures made with Meta's code, offline hub, two threads."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# pytest-xdist's workers start with COLUMNS=80, which the CLI's console would keep from its import on;
# the CLI tests set the width they read
if os.environ.get("PYTEST_XDIST_WORKER"):
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)


@dataclass(frozen=True)
class ReferenceFixtures:
    """Meta's T16 state dicts and their reference outputs (see shared/fixtures/README.md)."""

    folder: Path
    names: tuple[str, ...] = ("PE-Core-T16-384", "PE-Spatial-T16-512")

    def checkpoint(self, name: str) -> Path:
        return self.folder / f"{name}_s0.pt"

    def outputs(self, name: str) -> dict[str, np.ndarray]:
        with np.load(self.folder / f"{name}_s0.npz") as data:
            return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def fixtures() -> ReferenceFixtures:
    """The fixtures folder: PE_EXPORT_FIXTURES where set (CI checks them out into its workspace),
    else ../shared/fixtures beside the checkout."""
    folder = Path(os.environ.get("PE_EXPORT_FIXTURES") or ROOT.parent / "shared" / "fixtures")
    if not folder.is_dir():
        pytest.exit(f"reference fixtures not found at {folder}; set PE_EXPORT_FIXTURES", returncode=4)
    return ReferenceFixtures(folder)


class FixtureExports:
    """ONNX exports of the fixtures' weights, each made once per test session (exports are the slow
    part of the suite): `t16_exports(name, target="trt11", simplify=True)` gives an `ExportResult`.
    Tests read these files; a test that changes an artifact makes its own."""

    def __init__(self, fixtures: ReferenceFixtures, folder: Path):
        self._fixtures, self._folder = fixtures, folder
        self._loaded: dict[str, object] = {}
        self._made: dict[tuple, object] = {}

    def loaded(self, name: str):
        from pe_export.model import load_model

        if name not in self._loaded:
            self._loaded[name] = load_model(name, self._fixtures.checkpoint(name))
        return self._loaded[name]

    def __call__(self, name: str, **options):
        from pe_export.onnx.export import ExportOptions, export_onnx

        key = (name, *sorted(options.items()))
        if key not in self._made:
            path = self._folder / f"{name}-{len(self._made)}.onnx"
            self._made[key] = export_onnx(self.loaded(name), ExportOptions(**options), path)
        return self._made[key]


@pytest.fixture(scope="session")
def t16_exports(fixtures, tmp_path_factory) -> FixtureExports:
    return FixtureExports(fixtures, tmp_path_factory.mktemp("t16-exports"))


@pytest.fixture
def plm_t16(monkeypatch):
    """A PLM-shaped variant small enough for tests, registered for this test: the Spatial T16 tower (1024
    patch tokens, so 256 image features per tile) and a projector to D 64."""
    import dataclasses

    from pe_export import variants

    plm = dataclasses.replace(variants.get_variant("PE-Spatial-T16-512"), name="PLM-T16", family="PLM",
                              projector_dim=64, timm_name="")
    monkeypatch.setattr(variants, "VARIANTS", (*variants.VARIANTS, plm))
    return plm


@pytest.fixture(scope="session")
def latency_report():
    """A latency report of planted rows: latency_report([("torch", 100.0), ("onnxruntime", 80.0, batch)])."""
    from pe_export.report import LatencyMs, LatencyRow, make_report

    def row(backend: str, p50: float, batch: int = 1, precision: str = "fp32") -> LatencyRow:
        lat = LatencyMs(min=p50, mean=p50, p50=p50, p90=p50, p95=p50, p99=p50)
        return LatencyRow(backend=backend, precision=precision, batch=batch, latency_ms=lat,
                          throughput_ips=batch * 1000 / p50, peak_rss_mb=100.0, iters=5)

    def report(rows: list[tuple]):
        return make_report("latency", "PE-Spatial-T16-512", "test cpu", {"torch": "x"}, {"iters": 5},
                           [row(*r) for r in rows])

    return report


@pytest.fixture(autouse=True, scope="session")
def _offline_hub():
    """Tests never reach the network: hub look-ups answer from the cache alone."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # two cores: one thread per pytest-xdist worker, else two
    torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


@pytest.fixture
def forbid_loading(monkeypatch):
    """forbid_loading(why): from now on, loading weights (here, or by starting the worker that would)
    fails the test with `why`: for checks that must come before any work."""
    def forbid(why: str) -> None:
        def fail(*args, **kwargs):
            pytest.fail(why)
        monkeypatch.setattr("pe_export.model.factory.load_model", fail)
        monkeypatch.setattr("pe_export.openvino.ir.run_worker", fail)
        monkeypatch.setattr("pe_export.pipeline.commands.run_worker", fail)

    return forbid


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def interruptible() -> dict:
    """Popen arguments for a child that a test sends SIGINT. A suite started in the background (`cmd &`)
    hands its children SIGINT ignored, which the CLI rightly keeps; the child restores the default."""
    return {"preexec_fn": _default_sigint}
