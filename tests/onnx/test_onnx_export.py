"""ONNX export on the T16 fixtures: parity with Meta's outputs, graph shape per lowering, safe writes."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest

from pe_export.errors import PeExportError, UsageError
from pe_export.manifests import identity
from pe_export.model import ModelSource, load_model
from pe_export.onnx import export as export_module
from pe_export.onnx.check import check_onnx
from pe_export.onnx.export import ExportOptions, export_onnx, export_variant
from pe_export.runners.onnxruntime import OrtRunner

CORE, SPATIAL = "PE-Core-T16-384", "PE-Spatial-T16-512"
FIXTURE_TOLERANCE = 1e-4
FORBIDDEN = {"Sin", "Cos", "If", "Loop", "Scan"}


@pytest.fixture(scope="module")
def loaded(t16_exports):
    return {name: t16_exports.loaded(name) for name in (CORE, SPATIAL)}


CASES = {
    (SPATIAL, "trt11"): {"target": "trt11", "simplify": True},
    (SPATIAL, "jetson"): {"target": "jetson"},
    (SPATIAL, "mixed"): {"target": "trt11", "attention": "decomposed"},
    (CORE, "trt11"): {"target": "trt11", "simplify": True},
    (CORE, "trt10"): {"target": "trt10"},
    (CORE, "ort-tokens-layer-2"): {"target": "ort", "output": "tokens", "layer": -2},
    (CORE, "strip-b1"): {"target": "trt10.15", "output": "tokens", "strip_cls": True, "batch": 1},
}


@pytest.fixture(scope="module")
def exports(t16_exports):
    """One export per (variant, case), shared by the tests below (and, through `t16_exports`, others)."""
    return {key: t16_exports(key[0], **options) for key, options in CASES.items()}


def _histogram(path: Path) -> dict[str, int]:
    model = onnx.load(str(path), load_external_data=False)
    counts: dict[str, int] = {}
    for node in model.graph.node:
        key = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.parametrize(
    "case, reference",
    [
        ((SPATIAL, "trt11"), "forward"),
        ((SPATIAL, "jetson"), "forward"),
        ((SPATIAL, "mixed"), "forward"),
        ((CORE, "trt11"), "forward"),
        ((CORE, "trt10"), "forward"),
        ((CORE, "ort-tokens-layer-2"), "features_layer-2"),
        ((CORE, "strip-b1"), "features_norm_strip"),
    ],
)
def test_exports_match_meta_reference(fixtures, exports, case, reference):
    data = fixtures.outputs(case[0])
    out = OrtRunner(exports[case].path).run(data["input"])
    assert out.shape == data[reference].shape
    assert np.abs(out - data[reference]).max() <= FIXTURE_TOLERANCE


@pytest.mark.parametrize("case", [(SPATIAL, "trt11"), (SPATIAL, "jetson"), (CORE, "trt11")])
def test_dynamic_batch_really_is_dynamic(exports, loaded, case):
    import torch

    runner = OrtRunner(exports[case].path)
    model = loaded[case[0]].model
    size = loaded[case[0]].variant.image_size
    for batch in (1, 3):
        x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch)) * 2 - 1
        with torch.no_grad():
            expected = model(x).numpy()
        out = runner.run(x.numpy())
        assert out.shape[0] == batch
        assert np.abs(out - expected).max() <= FIXTURE_TOLERANCE


def test_static_batch_is_static(exports):
    path = exports[(CORE, "strip-b1")].path
    shape = onnx.load(str(path), load_external_data=False).graph.input[0].type.tensor_type.shape
    assert [d.dim_value for d in shape.dim] == [1, 3, 384, 384]
    with pytest.raises(Exception):
        OrtRunner(path).run(np.zeros((3, 3, 384, 384), np.float32))


def test_fused_lowering_op_counts(exports):
    layers = 12
    spatial = _histogram(exports[(SPATIAL, "trt11")].path)
    assert spatial["RotaryEmbedding"] == 2 * layers and spatial["Attention"] == layers
    assert "Softmax" not in spatial
    core = _histogram(exports[(CORE, "trt11")].path)
    assert core["RotaryEmbedding"] == 2 * layers and core["Attention"] == layers + 1  # + the pooler
    for path in (exports[(SPATIAL, "trt11")].path, exports[(CORE, "trt11")].path):
        attention = [n for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Attention"]
        assert all(len(n.output) == 1 for n in attention)


def test_decomposed_lowering_op_counts(exports):
    for case, softmaxes in (((SPATIAL, "jetson"), 12), ((CORE, "trt10"), 13)):
        histogram = _histogram(exports[case].path)
        assert "RotaryEmbedding" not in histogram and "Attention" not in histogram
        assert histogram["Softmax"] == softmaxes
        model = onnx.load(str(exports[case].path), load_external_data=False)
        assert model.opset_import[0].version == 17
    mixed = _histogram(exports[(SPATIAL, "mixed")].path)
    assert mixed["RotaryEmbedding"] == 24 and "Attention" not in mixed and mixed["Softmax"] == 12


def test_no_forbidden_ops_in_any_graph(exports):
    for result in exports.values():
        ops = set(_histogram(result.path))
        assert not ops & FORBIDDEN
        assert not any("::" in op for op in ops)  # no com.microsoft or other custom domains


@pytest.mark.parametrize("case, target", [((SPATIAL, "trt11"), "trt11"), ((SPATIAL, "jetson"), "jetson"),
                                          ((CORE, "trt10"), "trt10"), ((CORE, "ort-tokens-layer-2"), "ort")])
def test_each_export_passes_its_own_target_check(exports, case, target):
    assert check_onnx(exports[case].path, target).ok


def test_manifest_records_the_export(exports, loaded):
    result = exports[(SPATIAL, "trt11")]
    manifest = json.loads(result.manifest_path.read_text())
    assert manifest == result.manifest.dump()
    assert manifest["schema"] == "pe-export/manifest/1" and set(manifest["files"]) == {result.path.name}
    assert manifest["identity"] == identity(result.manifest.key, result.manifest.files)
    assert manifest["variant"] == SPATIAL
    assert manifest["weights"]["sha256"] == loaded[SPATIAL].source.sha256
    assert manifest["options"]["opset"] == 23 and manifest["options"]["batch"] == "dynamic"
    assert manifest["inputs"] == [{"name": "pixel_values", "dtype": "float32", "shape": ["batch", 3, 512, 512]}]
    assert manifest["outputs"] == [{"name": "tokens", "dtype": "float32", "shape": ["batch", 1025, 192]}]
    assert manifest["op_histogram"]["RotaryEmbedding"] == 24
    assert manifest["parity"]["cosine_min"] >= 0.99999 and manifest["parity"]["max_abs"] <= 1e-4
    assert manifest["simplify"]["nodes_after"] <= manifest["simplify"]["nodes_before"]
    assert manifest["nodes"] == sum(manifest["op_histogram"].values())
    assert set(manifest["versions"]) >= {"pe-export", "torch", "onnx", "onnxruntime"}
    assert manifest["peak_rss_mb"] > 0 and manifest["export_seconds"] > 0


def test_default_path_names_variant_target_and_departures(loaded, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = export_variant(ModelSource(SPATIAL, random_init=True), options=ExportOptions(target="jetson", batch=1))
    assert result.path == Path("artifacts/PE-Spatial-T16-512/PE-Spatial-T16-512.jetson.b1.onnx")
    assert result.path.is_file() and result.manifest.weights.seed == 0


def test_external_data_for_big_models(fixtures, loaded, tmp_path, monkeypatch):
    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
    path = tmp_path / "big.onnx"
    result = export_onnx(loaded[SPATIAL], ExportOptions(), path)
    data = tmp_path / "big.onnx.data"
    assert result.manifest.external_data and data.is_file()
    assert path.stat().st_size < 1_000_000 < data.stat().st_size
    assert check_onnx(path, "trt11").ok
    reference = fixtures.outputs(SPATIAL)
    assert np.abs(OrtRunner(path).run(reference["input"]) - reference["forward"]).max() <= FIXTURE_TOLERANCE
    data.unlink()
    report = check_onnx(path, "trt11")
    assert not report.ok and "external data file big.onnx.data is missing" in str(report.findings[0])


# ---- failures leave nothing behind -------------------------------------------------------------

def _folder_state(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_parity_miss_fails_and_keeps_the_previous_file(loaded, tmp_path, exports):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous good model")
    before = _folder_state(tmp_path)
    with pytest.raises(PeExportError, match="differs from torch .*max abs .*nothing was written"):
        export_onnx(loaded[SPATIAL], ExportOptions(max_abs=0.0), path)
    assert _folder_state(tmp_path) == before


def test_interrupt_mid_write_leaves_no_file(loaded, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        (args[-1]).write_bytes(b"half a model")  # the staged file, as a kill mid-write would leave it
        raise KeyboardInterrupt

    monkeypatch.setattr(export_module, "_prove", interrupted)
    path = tmp_path / "model.onnx"
    with pytest.raises(KeyboardInterrupt):
        export_onnx(loaded[SPATIAL], ExportOptions(), path)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_one_clear_error(loaded, tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_module, "_save_onnx", full)
    with pytest.raises(PeExportError, match="disk full while writing"):
        export_onnx(loaded[SPATIAL], ExportOptions(), tmp_path / "model.onnx")
    assert list(tmp_path.iterdir()) == []


def test_killed_export_process_leaves_no_file_and_the_next_export_clears_its_staging(tmp_path, loaded):
    path = tmp_path / "model.onnx"
    proc = subprocess.Popen(
        [sys.executable, "-m", "pe_export.cli", "onnx", "-v", SPATIAL, "--random-init", "-o", str(path)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    while time.time() < deadline and not any(p.name.endswith(".partial") for p in tmp_path.iterdir()):
        time.sleep(0.1)  # wait until it is writing
    time.sleep(1.0)
    proc.kill()
    proc.wait()
    assert not path.exists() and not (tmp_path / "model.onnx.json").exists()
    leftovers = list(tmp_path.iterdir())  # the killed process could not clean up its staging folder
    assert len(leftovers) == 1 and leftovers[0].name.startswith(f".model.onnx.{proc.pid}.")
    live = tmp_path / ".model.onnx.1.x.partial"  # pid 1 is alive: another export's staging stays
    live.mkdir()
    export_onnx(loaded[SPATIAL], ExportOptions(), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "model.onnx", "model.onnx.json"]


@pytest.mark.parametrize(
    "options, message",
    [
        (ExportOptions(opset=17), "needs opset 23 or higher, not 17; use --rope decomposed"),
        (ExportOptions(target="trt9"), "unknown target 'trt9'"),
        (ExportOptions(output="pooled"), "has no attention pooler"),
        (ExportOptions(layer=12), "out of range"),
        (ExportOptions(opset=13, rope="decomposed", attention="decomposed"), "below the lowest supported"),
    ],
)
def test_bad_options_fail_before_loading(options, message, tmp_path, forbid_loading):
    forbid_loading("loaded weights before checking options")
    with pytest.raises(UsageError, match=message):
        export_variant(ModelSource(SPATIAL, random_init=True), options=options, output=tmp_path / "m.onnx")


def test_unwritable_output_fails_before_loading(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(UsageError, match="cannot create the output folder"):
        export_variant(ModelSource(SPATIAL, random_init=True), output=blocker / "sub" / "m.onnx")


def test_nodes_are_named_after_their_modules(exports):
    for case in ((SPATIAL, "trt11"), (SPATIAL, "jetson")):
        names = [n.name for n in onnx.load(str(exports[case].path), load_external_data=False).graph.node]
        assert len(names) == len(set(names))
        assert "conv1/conv2d" in names
        assert sum(n.startswith("transformer.resblocks.11.attn/rotary") for n in names) >= 2
    # no machine-specific metadata (stack traces with local paths) in the artifact
    model = onnx.load(str(exports[(SPATIAL, "trt11")].path), load_external_data=False)
    assert not any(node.metadata_props for node in model.graph.node)


def test_a_plan_frees_the_weights_it_loaded_when_it_exports_never_those_it_was_given(tmp_path, monkeypatch):
    """A command's plan exports a missing ONNX from weights it then loads again when a later step needs them."""
    from pe_export.pipeline import Plan
    from pe_export.precision.profiles import cpu_profile

    monkeypatch.chdir(tmp_path)
    plan = Plan(ModelSource(SPATIAL, random_init=True), cpu_profile(SPATIAL))
    first = plan.weights()
    made = plan.fp32()
    assert all(p.numel() == 0 for p in first.model.parameters())  # onnxruntime's copy replaced them
    assert sum(p.numel() for p in plan.weights().model.parameters()) > 0  # loaded again
    given = load_model(SPATIAL, random_init=True)
    kept = sum(p.numel() for p in given.model.parameters())
    reused = Plan.of(given, cpu_profile(SPATIAL)).fp32()
    assert reused.path == made.path == Path("artifacts") / SPATIAL / f"{SPATIAL}.ort.onnx" and made.path.is_file()
    assert reused.manifest == made.manifest
    monkeypatch.chdir(tmp_path / "artifacts")  # nothing to reuse here: the given weights export and stay
    Plan.of(given, cpu_profile(SPATIAL)).fp32()
    assert sum(p.numel() for p in given.model.parameters()) == kept > 0
