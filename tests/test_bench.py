"""The parity and latency harness: metrics, report schema, regression gate, interruption, retrieval."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pe_export.bench.bench import BenchSettings, bench_rows, regressions, run_bench
from pe_export.bench.metrics import compare
from pe_export.bench.parity import retrieval_agreement, run_in_chunks, run_parity
from pe_export.bench.report import LatencyMs, LatencyRow, load_report, make_report, to_markdown
from pe_export.model import load_model
from pe_export.onnx.export import ExportOptions, export_onnx
from tests.conftest import fixture_checkpoint

SPATIAL = "PE-Spatial-T16-512"


# ---- metrics on known vectors ------------------------------------------------------------------

def test_identical_outputs():
    x = np.random.default_rng(0).normal(size=(2, 5, 8))
    f = compare(x, x.copy())
    assert f.cosine_mean == pytest.approx(1.0, abs=1e-15) and f.cosine_min == pytest.approx(1.0, abs=1e-15)
    assert (f.max_abs, f.max_rel, f.rel_l2) == (0.0, 0.0, 0.0)


def test_orthogonal_outputs():
    ref = np.array([[1.0, 0.0], [0.0, 2.0]])
    cand = np.array([[0.0, 3.0], [5.0, 0.0]])
    f = compare(ref, cand)
    assert f.cosine_mean == pytest.approx(0.0) and f.cosine_min == pytest.approx(0.0)
    assert f.max_abs == pytest.approx(5.0)
    assert f.rel_l2 == pytest.approx(np.sqrt(1 + 9 + 25 + 4) / np.sqrt(5))


def test_scaled_outputs_keep_cosine_but_not_error():
    ref = np.random.default_rng(1).normal(size=(3, 4, 16))
    f = compare(ref, 2 * ref)
    assert f.cosine_min == pytest.approx(1.0)
    assert f.rel_l2 == pytest.approx(1.0) and f.max_rel == pytest.approx(1.0)
    assert f.max_abs == pytest.approx(np.abs(ref).max())


def test_one_bad_token_shows_in_min_not_mean():
    ref = np.ones((1, 100, 4))
    cand = ref.copy()
    cand[0, 7] = [1, -1, 1, -1]
    f = compare(ref, cand)
    assert f.cosine_min == pytest.approx(0.0) and f.cosine_mean == pytest.approx(0.99)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="shapes differ"):
        compare(np.zeros((1, 2)), np.zeros((2, 1)))


# ---- retrieval -----------------------------------------------------------------------------------

def test_retrieval_agreement_on_planted_permutation():
    # three well separated pairs: each image's nearest neighbour is its twin
    base = np.eye(6)[[0, 0, 2, 2, 4, 4]] + 0.01 * np.eye(6)
    assert retrieval_agreement(base, base) == 1.0
    # swap images 1 and 2 in the candidate: images 0,1,2,3 now find the wrong twin, 4 and 5 still agree
    permuted = base[[0, 2, 1, 3, 4, 5]]
    assert retrieval_agreement(base, permuted) == pytest.approx(2 / 6)


def test_chunks_pad_a_short_last_batch():
    seen = []

    def run(x):
        seen.append(len(x))
        return x * 2

    out = run_in_chunks(run, np.arange(5, dtype=np.float32).reshape(5, 1), 2)
    assert seen == [2, 2, 2] and out.ravel().tolist() == [0, 2, 4, 6, 8]


# ---- report schema and regression gate -----------------------------------------------------------

def _row(backend, p50, batch=1, precision="fp32"):
    lat = LatencyMs(min=p50, mean=p50, p50=p50, p90=p50, p95=p50, p99=p50)
    return LatencyRow(backend=backend, precision=precision, batch=batch, latency_ms=lat,
                      throughput_ips=batch * 1000 / p50, peak_rss_mb=100.0, iters=5)


def _latency(rows):
    return make_report("latency", SPATIAL, "test cpu", {"torch": "x"}, {"iters": 5}, rows)


def test_report_round_trips_through_json(tmp_path):
    report = _latency([_row("torch", 100.0), _row("onnxruntime", 80.0)])
    path = tmp_path / "r.json"
    report.write(path, tmp_path / "r.md")
    data = json.loads(path.read_text())
    assert data["schema"] == "pe-export/latency/1" and list(data)[:6] == ["schema", "variant", "device", "versions", "settings", "results"]
    assert set(data["results"][0]) >= {"backend", "precision", "batch", "latency_ms", "throughput_ips", "peak_rss_mb"}
    assert set(data["results"][0]["latency_ms"]) == {"min", "mean", "p50", "p90", "p95", "p99"}
    assert load_report(path) == report
    assert "| onnxruntime | fp32 | 1 | 80.00 |" in (tmp_path / "r.md").read_text()


def test_report_validation_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"schema": "something/else/1", "results": []}))
    with pytest.raises(ValueError, match="unknown report schema"):
        load_report(path)
    good = _latency([_row("torch", 1.0)]).to_json()
    del good["results"][0]["latency_ms"]["p99"]
    path.write_text(json.dumps(good))
    with pytest.raises(ValueError):
        load_report(path)


def test_regression_gate_both_ways():
    baseline = _latency([_row("torch", 100.0), _row("onnxruntime", 80.0)])
    slower = _latency([_row("torch", 100.0), _row("onnxruntime", 100.0)])
    faster = _latency([_row("torch", 100.0), _row("onnxruntime", 60.0)])
    assert regressions(slower, baseline, 10) == ["onnxruntime fp32 batch 1: 80 -> 100 ms (+25%)"]
    assert regressions(slower, baseline, 30) == []
    assert regressions(faster, baseline, 10) == []
    assert regressions(baseline, faster, 10)  # the other way round is a regression


def test_ratio_gate_ignores_machine_speed():
    baseline = _latency([_row("torch", 100.0), _row("onnxruntime", 80.0)])
    slow_machine = _latency([_row("torch", 200.0), _row("onnxruntime", 160.0)])
    assert regressions(slow_machine, baseline, 10, mode="absolute")
    assert regressions(slow_machine, baseline, 10, mode="ratio") == []
    worse_ratio = _latency([_row("torch", 200.0), _row("onnxruntime", 200.0)])
    assert regressions(worse_ratio, baseline, 10, mode="ratio") == ["onnxruntime fp32 batch 1: 0.8 -> 1 x torch (+25%)"]


# ---- the harness on a real model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def spatial():
    return load_model(SPATIAL, fixture_checkpoint(SPATIAL))


class _FakeRunner:
    backend, precision = "fake", "fp32"

    def __init__(self, fail_after=None):
        self.calls = 0
        self.fail_after = fail_after

    def run(self, batch):
        self.calls += 1
        if self.fail_after is not None and self.calls > self.fail_after:
            raise KeyboardInterrupt
        return batch

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


def test_interrupted_bench_keeps_finished_rows(spatial, monkeypatch):
    settings = BenchSettings(backends=["torch", "onnxruntime"], batches=[1, 2], warmup=0, iters=2)
    runners = {"torch": _FakeRunner(), "onnxruntime": _FakeRunner(fail_after=3)}
    monkeypatch.setattr("pe_export.bench.backends.runner_opener", lambda *a, **k: lambda backend, precision: runners[backend])
    report = run_bench(spatial, settings)
    assert report.interrupted
    assert [(r.backend, r.batch) for r in report.results] == [("torch", 1), ("torch", 2), ("onnxruntime", 1)]
    assert "_interrupted: finished rows only_" in to_markdown(report)


def test_iterations_or_seconds(spatial):
    runner = _FakeRunner()
    rows = list(bench_rows(spatial, BenchSettings(backends=["torch"], batches=[1], warmup=3, iters=4), lambda b, p: runner))
    assert runner.calls == 7 and rows[0].iters == 4
    rows = list(bench_rows(spatial, BenchSettings(backends=["torch"], batches=[1], warmup=0, seconds=0.05), lambda b, p: runner))
    assert rows[0].iters > 1


def test_bench_torch_and_onnxruntime_rows(spatial, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = BenchSettings(backends=["torch", "onnxruntime"], batches=[1, 2], warmup=1, iters=2, threads=2)
    report = run_bench(spatial, settings)
    assert [(r.backend, r.batch) for r in report.results] == [("torch", 1), ("torch", 2), ("onnxruntime", 1), ("onnxruntime", 2)]
    for row in report.results:
        assert row.latency_ms.min <= row.latency_ms.p50 <= row.latency_ms.p99
        assert row.throughput_ips == pytest.approx(row.batch * 1000 / row.latency_ms.mean)
        assert row.peak_rss_mb > 0
    assert report.settings["threads"] == 2 and report.versions["onnxruntime"]
    # the onnxruntime artifact was exported under artifacts/ and is reused by the next run
    onnx_files = list(Path("artifacts", SPATIAL).glob("*.onnx"))
    assert [p.name for p in onnx_files] == [f"{SPATIAL}.ort.onnx"]
    mtime = onnx_files[0].stat().st_mtime_ns
    run_bench(spatial, BenchSettings(backends=["onnxruntime"], batches=[1], warmup=0, iters=1))
    assert onnx_files[0].stat().st_mtime_ns == mtime


def test_bad_bench_settings():
    with pytest.raises(ValueError, match="unknown backend"):
        BenchSettings(backends=["tvm"])
    with pytest.raises(ValueError, match="unknown precision"):
        BenchSettings(precisions=["int4"])
    with pytest.raises(ValueError, match="positive"):
        BenchSettings(batches=[0])


def test_parity_report_on_exports(spatial, tmp_path):
    good = export_onnx(spatial, ExportOptions(target="jetson"), tmp_path / "good.onnx").path
    report = run_parity(spatial, [good], synthetic=3)
    row = report.results[0]
    assert report.schema_ == "pe-export/parity/1"
    assert row.precision == "fp32" and row.passed and row.cosine_min > 0.99999 and row.max_abs < 1e-4
    assert row.retrieval_top1 is None  # synthetic inputs: no retrieval figure


def test_parity_flags_a_wrong_artifact(spatial, tmp_path):
    # an export of other weights must fail the gate against this model
    other = load_model(SPATIAL, random_init=True, seed=5)
    wrong = export_onnx(other, ExportOptions(), tmp_path / "wrong.onnx").path
    row = run_parity(spatial, [wrong], synthetic=2).results[0]
    assert row.passed is False and row.cosine_mean < 0.9


def test_parity_with_images_adds_retrieval(spatial, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "notes.txt").write_text("not an image")
    artifact = export_onnx(spatial, ExportOptions(), tmp_path / "m.onnx").path
    report = run_parity(spatial, [artifact], images=folder)
    assert report.settings["count"] == 4 and report.results[0].retrieval_top1 == 1.0


def test_backend_precision_pairs_that_cannot_run_are_skipped():
    from pe_export.bench.bench import skipped_pairs

    settings = BenchSettings(backends=["torch", "onnxruntime", "tensorrt"], precisions=["bf16", "int8"])
    assert skipped_pairs(settings) == ["torch int8", "onnxruntime bf16"]
