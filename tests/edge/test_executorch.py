"""ExecuTorch programs of the fixture weights, proven on ExecuTorch's runtime against torch fp32 on inputs
apart from those the stage proved them on; reused by key; refused before any work on bad requests."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from pe_export.artifacts import Digests
from pe_export.cli import main
from pe_export.edge.executorch import export_executorch
from pe_export.model import load_model
from pe_export.model.head import OutputHead
from pe_export.pipeline import Plan
from pe_export.pipeline.commands import executorch_variant
from pe_export.precision.profiles import cpu_profile
from pe_export.precision.spec import calibration_key
from pe_export.runners import open_runner
from pe_export.source import ModelSource
from pe_export.validate import compare, seeded_batch
from pe_export.variants import get_variant


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def _independent_parity(fixtures, name: str, output: str, path, layer: int = -1) -> float:
    """Token cosine mean of the program against torch fp32 on two seeded images of their own (seed 7)."""
    variant = get_variant(name)
    head = OutputHead(load_model(name, fixtures.checkpoint(name)).model, output, layer).eval()
    batch = seeded_batch(variant, 2, 7)
    with torch.no_grad():
        reference = head(torch.from_numpy(batch)).numpy()
    with open_runner(path, threads=2) as runner:
        assert runner.backend == "executorch" and runner.versions()["executorch"]
        candidate = np.concatenate([runner.run(image[None]) for image in batch])
    return compare(reference, candidate).cosine_mean


def _early_tokens(fixtures, name: str, precision: str, profile):
    """The weights, plan and request of a program of block 2's tokens (of 12): every op a tower has, in a
    quarter of its lowering time."""
    loaded = load_model(name, fixtures.checkpoint(name))
    plan = Plan(ModelSource(name, str(fixtures.checkpoint(name))), profile, loaded=loaded)
    request = plan.program_request(precision, "xnnpack")
    return loaded, plan, dataclasses.replace(request, spec=dataclasses.replace(request.spec, output="tokens", layer=2))


def test_the_command_writes_a_proven_pooled_program_and_the_api_reuses_it(
        fixtures, tmp_path, capsys, monkeypatch, forbid_loading):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    name = "PE-Core-T16-384"
    code, out, _ = run(capsys, "executorch", "-v", name, "-c", str(fixtures.checkpoint(name)))
    path = tmp_path / "artifacts" / name / f"{name}.pooled.fp32.pte"  # the output head is in the name
    assert code == 0 and f"wrote artifacts/{name}/{name}.pooled.fp32.pte (fp32, xnnpack: 1 partition(s), 0 op(s) outside" in out
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.json"]
    m = json.loads((path.parent / f"{path.name}.json").read_text())
    assert (m["kind"], m["delegate"], m["runs_here"], m["options"]["output"], m["options"]["batch"]) == (
        "executorch-program", "xnnpack", True, "pooled", 1)
    assert m["delegation"] == {"partitions": 1, "outside": {}}  # the whole graph in one XNNPACK delegate
    assert m["outputs"][0]["shape"] == [1, 512] and m["parity"]["cosine_mean"] >= 0.99999
    assert _independent_parity(fixtures, name, "pooled", path) >= 0.99999
    forbid_loading("a program whose key matches is reused without loading weights")
    again = executorch_variant(ModelSource(name, str(fixtures.checkpoint(name))), "fp32", output=path)
    assert again.reused and again.parity.passed and again.manifest.identity == m["identity"]


def test_fp16_spatial_tokens_on_xnnpack(fixtures, tmp_path):
    name = "PE-Spatial-T16-512"
    profile = cpu_profile(name)
    loaded, _, request = _early_tokens(fixtures, name, "fp16", profile)
    made = export_executorch(loaded, request, profile, tmp_path / "sp.pte")
    assert made.manifest.delegation["partitions"] == 1
    # what stays outside is casts only: the fp32 input and scalar constants into fp16, the output back
    assert set(made.manifest.delegation["outside"]) == {"dim_order_ops._to_dim_order_copy.default"}
    assert 0.9999 <= _independent_parity(fixtures, name, "tokens", made.path, layer=2) < 0.9999999  # fp16, not fp32


@pytest.mark.parametrize("args, message", [
    (["--precision", "int4"], "unknown precision 'int4'; choose one of: fp32, fp16, int8"),
    (["--delegate", "vulkan"], "unknown delegate 'vulkan'; choose one of: xnnpack, coreml"),
    (["--profile", "pe-lang-l14-cpu-edge"], "profile pe-lang-l14-cpu-edge is for PE-Lang-L14-448, not PE-Spatial-T16-512"),
    (["--precision", "int8", "--delegate", "coreml"], "int8 programs are made for XNNPACK"),
    (["-o", "/proc/no/such/x.pte"], "cannot create the output folder"),
])
def test_bad_requests_are_one_line_and_exit_2(capsys, forbid_loading, args, message):
    forbid_loading("a bad request is refused before any weights load")
    code, _, err = run(capsys, "executorch", "-v", "PE-Spatial-T16-512", "--random-init", *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_without_executorch_exit_3_before_any_work(capsys, monkeypatch, forbid_loading):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "executorch" else real(name, *a))
    forbid_loading("a missing extra is refused before any weights load")
    code, _, err = run(capsys, "executorch", "-v", "PE-Spatial-T16-512", "--random-init")
    assert code == 3 and "pip install 'pe-export[executorch]'" in err


def test_an_int8_program_is_calibrated_proven_and_keyed_on_its_calibration(fixtures, tmp_path):
    name = "PE-Core-T16-384"
    profile = cpu_profile(name).with_calibration("synthetic", 6)
    loaded, plan, request = _early_tokens(fixtures, name, "int8", profile)
    path = tmp_path / "core.int8.pte"
    made = export_executorch(loaded, request, profile, path, calibration=plan.calibration())
    m = made.manifest
    assert m.delegation == {"partitions": 1, "outside": {}}  # quantized linears and matmuls inside XNNPACK
    assert (m.calibration["source"], m.calibration["count"]) == ("synthetic", 6)
    assert made.parity.passed and made.parity.threshold == profile.threshold("int8") == 0.99
    assert 0.99 <= _independent_parity(fixtures, name, "tokens", path, layer=2) < 0.9999  # int8: close, not fp32
    assert m.key == request.key(loaded.variant, loaded.source, 0.99, calibration_key(profile, Digests()))
    assert m.key != request.key(loaded.variant, loaded.source, 0.99, calibration_key(
        profile.with_calibration("synthetic", 5), Digests()))


def test_int8_of_real_weights_without_images_is_refused(fixtures, capsys, forbid_loading):
    forbid_loading("calibrating real weights on noise is refused before any weights load")
    name = "PE-Spatial-T16-512"
    code, _, err = run(capsys, "executorch", "-v", name, "-c", str(fixtures.checkpoint(name)), "--precision", "int8")
    assert code == 2 and "int8 of real weights needs real calibration images" in err
