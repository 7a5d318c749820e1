"""INT8 on stress variants of the Spatial T16 fixture (tests/model/test_stress.py builds and checks them):
plain per-tensor INT8 misses the threshold, the outlier smoothing and the automatic fallback pass,
sensitivity ranks the planted sites first, and FP8 is reported on the same models."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
import yaml

from pe_export.cli import main
from pe_export.errors import CheckFailed
from pe_export.model import load_model
from pe_export.model.stress import save_stressed
from pe_export.precision import qdq
from pe_export.precision.calibration import load_calibration
from pe_export.precision.profiles import QuantSection, load_profile
from pe_export.pipeline import Plan
from pe_export.precision.quantize import make_precision
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import compare, reference_outputs, synthetic_inputs

SPATIAL = "PE-Spatial-T16-512"
SKEWED = ["transformer.resblocks.4.mlp.c_proj/linear_19", "transformer.resblocks.8.mlp.c_proj/linear_35"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("outliers")


@pytest.fixture(scope="module")
def models(fixtures, folder) -> dict[str, Path]:
    """outliers: LayerNorm outlier channels (exact); skewed: those plus skewed post-GELU inputs."""
    return {name: save_stressed(fixtures.checkpoint(SPATIAL), SPATIAL, kinds, folder / f"{name}.pt")
            for name, kinds in (("outliers", ["outlier-channels"]), ("skewed", ["outlier-channels", "skewed-gelu"]))}


def _profile(folder: Path, name: str, threshold: float = 0.99, **int8) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "name": name, "variant": SPATIAL, "export": {"target": "ort"},
        "calibration": {"source": "synthetic", "samples": 8, "batch_size": 4},
        "quantization": {"int8": {"exclude": ["^conv1/"], **int8}}, "parity": {"int8": threshold, "fp8": threshold}}))
    return path


def _make(folder, model, precision, profile, name):
    loaded, chosen = load_model(SPATIAL, model), load_profile(profile)
    return make_precision(Plan.of(loaded, chosen).fp32(), loaded, precision, chosen,
                          load_calibration("synthetic", 8, 512), folder / f"{name}.{precision}.onnx")


def test_plain_int8_misses_and_smoothing_passes(folder, models, monkeypatch):
    monkeypatch.chdir(folder)
    with pytest.raises(CheckFailed, match=r"int8 misses its parity threshold: token cosine mean 0\.9[3-7]\d+ < 0\.99"):
        _make(folder, models["outliers"], "int8", _profile(folder, "plain", smoothing=None), "plain")
    smoothed = _make(folder, models["outliers"], "int8", _profile(folder, "default", 0.995), "smoothed")
    assert smoothed.parity.cosine_mean >= 0.9995  # measured 0.99990; plain 0.958
    summary = smoothed.manifest.smoothing
    assert summary["alpha"] == 0.5 and summary["pairs"] == 24  # ln_1 -> in_proj and ln_2 -> c_fc of 12 blocks
    assert summary["largest_channel_over_median"]["before"] > 30 > 3 > summary["largest_channel_over_median"]["after"]


def test_fp8_is_reported_on_the_same_models(folder, models, monkeypatch):
    """FP8's float grid absorbs the outlier channels without smoothing; what is left is the skewed sites' error."""
    monkeypatch.chdir(folder)
    fp8 = _make(folder, models["skewed"], "fp8", _profile(folder, "fp8", 0.99), "fp8")
    assert 0.998 < fp8.parity.cosine_mean < 0.9999  # measured 0.99938 (0.99941 without smoothing); int8 0.945
    assert fp8.manifest.smoothing["pairs"] == 24 and fp8.manifest.method == "max"


def test_auto_exclude_keeps_the_skewed_sites_and_prints_profile_lines(folder, models, monkeypatch, capsys):
    monkeypatch.chdir(folder)
    monkeypatch.setenv("COLUMNS", "200")
    target = folder / "auto.int8.onnx"
    with pytest.raises(SystemExit) as done:
        main(["quantize", "-v", SPATIAL, "-c", str(models["skewed"]), "--precision", "int8", "--calib", "synthetic",
              "--samples", "8", "--profile", str(_profile(folder, "strict", 0.995)), "--auto-exclude", "-o", str(target)])
    out = capsys.readouterr().out
    assert done.value.code in (0, None), out
    manifest = json.loads(target.with_name(target.name + ".json").read_text())
    fallback = manifest["auto_exclude"]
    assert sorted(fallback["excluded"]) == SKEWED and fallback["sites"] == 48  # the two planted sites, no other
    assert manifest["parity"]["cosine_mean"] >= 0.9995 and fallback["tried"][-1]["cosine_mean"] >= 0.995
    # a block's GEMMs do 12 w^2 MACs per token, its c_proj 4 w^2: two c_proj of 12 blocks are 8/144 of the work
    assert fallback["excluded_work_share"] == pytest.approx(8 / 144, abs=1e-4)
    assert "auto-exclude: kept 2 of 48 sites in high precision (5.6% of the quantized GEMM work)" in out
    # the printed lines, pasted into a profile, leave out exactly the sites the fallback proved
    pasted = yaml.safe_load(out.split("profile lines:\n", 1)[1])["quantization"]["int8"]["exclude"]
    assert pasted[0] == "^conv1/" and sorted(pasted[1:]) == [f"^{n.replace('.', chr(92) + '.')}$" for n in SKEWED]
    graph = onnx.load(manifest["source_onnx"]["path"], load_external_data=False).graph
    everything = {site.node for site in qdq.plan(graph, QuantSection(exclude=["^conv1/"]))}
    assert everything - {site.node for site in qdq.plan(graph, QuantSection(exclude=pasted))} == set(SKEWED)


def test_sensitivity_ranks_the_planted_sites_first_and_emulates_the_real_artifact(folder, models, monkeypatch,
                                                                                 capsys):
    monkeypatch.chdir(folder)
    monkeypatch.setenv("COLUMNS", "200")
    report, table, plot = folder / "sens.json", folder / "sens.md", folder / "sens.png"
    with pytest.raises(SystemExit) as done:
        main(["sensitivity", "-v", SPATIAL, "-c", str(models["skewed"]), "--precision", "int8", "--calib", "synthetic",
              "--profile", str(_profile(folder, "default", 0.995)), "--json", str(report), "--md", str(table),
              "--plot", str(plot)])
    out = capsys.readouterr().out
    assert done.value.code in (0, None), out
    data = json.loads(report.read_text())
    assert data["schema"] == "pe-export/sensitivity/1" and data["mode"] == "alone" and data["images"] == 1
    first = data["sites"][0]["site"]
    assert sorted(s["site"] for s in data["sites"][:2]) == SKEWED and len(data["sites"]) == 48
    assert data["sites"][1]["cosine_mean"] < 0.995 < data["sites"][2]["cosine_mean"]
    assert data["baselines"]["fp32"]["cosine_mean"] > 0.99999 and data["peak_rss_mb"]["calibration worker"] > 0
    assert f"| 1 | {first} | MatMul | 2.8 |" in table.read_text() and f"| 1 | {first} |" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    # the emulated "all quantized" configuration is the real artifact's output, up to integer accumulation
    with pytest.raises(CheckFailed):
        _make(folder, models["skewed"], "int8", _profile(folder, "default", 0.995), "real")
    loaded = load_model(SPATIAL, models["skewed"])
    images = synthetic_inputs(loaded.variant, data["images"]).batch
    real = OrtRunner(folder / "real.int8.onnx.rejected" / "real.int8.onnx").run(images)
    reference = reference_outputs(loaded.model, images)
    assert abs(compare(reference, real).cosine_mean - data["baselines"]["all quantized"]["cosine_mean"]) < 2e-4
