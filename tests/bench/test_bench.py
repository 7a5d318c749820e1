"""The parity and latency harness: regression gate, interruption, rows on a real model, parity reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pe_export.bench.bench import BenchSettings, bench_rows, regressions, run_bench
from pe_export.bench.parity import run_parity
from pe_export.report import to_markdown
from pe_export.model import load_model
from pe_export.onnx.export import ExportOptions, export_onnx

SPATIAL = "PE-Spatial-T16-512"


# ---- regression gate -----------------------------------------------------------

def test_regression_gate_both_ways(latency_report):
    baseline = latency_report([("torch", 100.0), ("onnxruntime", 80.0)])
    slower = latency_report([("torch", 100.0), ("onnxruntime", 100.0)])
    faster = latency_report([("torch", 100.0), ("onnxruntime", 60.0)])
    assert regressions(slower, baseline, 10) == ["onnxruntime fp32 batch 1: 80 -> 100 ms (+25%)"]
    assert regressions(slower, baseline, 30) == []
    assert regressions(faster, baseline, 10) == []
    assert regressions(baseline, faster, 10)  # the other way round is a regression


def test_ratio_gate_ignores_machine_speed(latency_report):
    baseline = latency_report([("torch", 100.0), ("onnxruntime", 80.0)])
    slow_machine = latency_report([("torch", 200.0), ("onnxruntime", 160.0)])
    assert regressions(slow_machine, baseline, 10, mode="absolute")
    assert regressions(slow_machine, baseline, 10, mode="ratio") == []
    worse_ratio = latency_report([("torch", 200.0), ("onnxruntime", 200.0)])
    assert regressions(worse_ratio, baseline, 10, mode="ratio") == ["onnxruntime fp32 batch 1: 0.8 -> 1 x torch (+25%)"]


# ---- the harness on a real model -------------------------------------------------------------------

@pytest.fixture(scope="module")
def spatial(fixtures):
    return load_model(SPATIAL, fixtures.checkpoint(SPATIAL))


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
    monkeypatch.setattr("pe_export.bench.bench.runner_opener", lambda *a, **k: lambda backend, precision: runners[backend])
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


def test_interleaved_rows_run_every_runner_once_per_round(spatial):
    calls = []

    class Recording(_FakeRunner):
        def __init__(self, name):
            super().__init__()
            self.name = name

        def run(self, batch):
            calls.append((self.name, len(batch)))
            return batch

    settings = BenchSettings(backends=["torch", "onnxruntime"], batches=[1, 2], warmup=1, iters=2, interleave=True)
    rows = list(bench_rows(spatial, settings, lambda backend, precision: Recording(backend)))
    assert [(r.backend, r.batch, r.iters) for r in rows] == [
        ("torch", 1, 2), ("onnxruntime", 1, 2), ("torch", 2, 2), ("onnxruntime", 2, 2)]
    rounds = [("torch", 1), ("onnxruntime", 1)] * 3 + [("torch", 2), ("onnxruntime", 2)] * 3  # warm-up, then 2 rounds
    assert calls == rounds
    with pytest.raises(ValueError, match="--interleave times --iters rounds"):
        BenchSettings(interleave=True, seconds=1.0)


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


def test_openvino_bf16_is_skipped_on_a_cpu_without_bf16_units(monkeypatch):
    from pe_export.bench.bench import skipped_pairs
    from pe_export.runners import openvino

    settings = BenchSettings(backends=["openvino"], precisions=["fp32", "fp16", "bf16", "int8"])
    monkeypatch.setattr(openvino, "cpu_capabilities", lambda: frozenset({"FP32", "BF16", "INT8"}))
    assert skipped_pairs(settings) == ["openvino fp16"]
    monkeypatch.setattr(openvino, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    assert skipped_pairs(settings) == ["openvino fp16", "openvino bf16"]


def test_cuda_graph_reaches_the_tensorrt_runner(spatial, monkeypatch, tmp_path):
    from pe_export.bench.backends import runner_opener

    opened = {}
    monkeypatch.setattr("pe_export.bench.backends.engine_artifact", lambda *a: tmp_path / "m.engine")
    monkeypatch.setattr("pe_export.bench.backends.open_runner",
                        lambda source, **options: opened.update(source=source, **options) or _FakeRunner())
    settings = BenchSettings(backends=["tensorrt"], batches=[1], warmup=0, iters=1, cuda_graph=True)
    rows = list(bench_rows(spatial, settings, runner_opener(spatial, settings)))
    assert opened == {"source": tmp_path / "m.engine", "backend": "tensorrt", "cuda_graph": True}
    assert [(r.backend, r.iters) for r in rows] == [("tensorrt", 1)]
    with pytest.raises(ValueError, match="--cuda-graph applies to the tensorrt backend only"):
        BenchSettings(cuda_graph=True)
    with pytest.raises(ValueError, match="--profile applies to the tensorrt backend only"):
        BenchSettings(profile="pe-lang-l14-datacenter")


def test_cpu_kind_names_the_model_and_matrix_flags_only(tmp_path, monkeypatch):
    from pe_export.runners import device

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9654 96-Core Processor\n"
                    "flags\t\t: fpu avx2 avx512f avx512_vnni avx512_bf16 sse4_2\n\nprocessor\t: 1\n")
    monkeypatch.setattr(device, "CPUINFO", info)
    assert device.cpu_kind() == "amd-epyc-9654-96-core-processor-avx512_bf16-avx512_vnni"
