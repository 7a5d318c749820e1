"""ExecuTorch programs of the fixture weights, proven on ExecuTorch's runtime against torch fp32 on inputs
apart from those the stage proved them on; reused by key; refused before any work on bad requests."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pe_export.cli import main
from pe_export.model import load_model
from pe_export.model.head import OutputHead
from pe_export.pipeline.commands import executorch_variant
from pe_export.runners import open_runner
from pe_export.source import ModelSource
from pe_export.validate import compare, seeded_batch
from pe_export.variants import get_variant


def run(capsys, *args) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def _independent_parity(fixtures, name: str, output: str, path) -> float:
    """Token cosine mean of the program against torch fp32 on two seeded images of their own (seed 7)."""
    variant = get_variant(name)
    head = OutputHead(load_model(name, fixtures.checkpoint(name)).model, output).eval()
    batch = seeded_batch(variant, 2, 7)
    with torch.no_grad():
        reference = head(torch.from_numpy(batch)).numpy()
    with open_runner(path, threads=2) as runner:
        assert runner.backend == "executorch" and runner.versions()["executorch"]
        candidate = np.concatenate([runner.run(image[None]) for image in batch])
    return compare(reference, candidate).cosine_mean


def test_a_pooled_fp32_program_is_proven_then_reused(fixtures, tmp_path, forbid_loading):
    name = "PE-Core-T16-384"
    source = ModelSource(name, str(fixtures.checkpoint(name)))
    made = executorch_variant(source, "fp32", output=tmp_path / "core.pte")
    m = made.manifest
    assert (m.kind, m.delegate, m.runs_here, m.options["output"], m.options["batch"]) == (
        "executorch-program", "xnnpack", True, "pooled", 1)
    assert m.delegation == {"partitions": 1, "outside": {}}  # the whole graph in one XNNPACK delegate
    assert m.outputs[0].shape == [1, 512] and made.parity.passed and made.parity.cosine_mean >= 0.99999
    assert _independent_parity(fixtures, name, "pooled", made.path) >= 0.99999
    forbid_loading("a program whose key matches is reused without loading weights")
    again = executorch_variant(source, "fp32", output=tmp_path / "core.pte")
    assert again.reused and again.manifest.identity == m.identity


def test_fp16_spatial_tokens_on_xnnpack(fixtures, tmp_path):
    name = "PE-Spatial-T16-512"
    made = executorch_variant(ModelSource(name, str(fixtures.checkpoint(name))), "fp16", output=tmp_path / "sp.pte")
    assert made.manifest.delegation["partitions"] == 1
    # what stays outside is casts only: the fp32 input and scalar constants into fp16, the output back
    assert set(made.manifest.delegation["outside"]) == {"dim_order_ops._to_dim_order_copy.default"}
    assert 0.9999 <= _independent_parity(fixtures, name, "tokens", made.path) < 0.9999999  # fp16, not fp32


def test_the_command_writes_a_spatial_fp32_program(fixtures, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    name = "PE-Spatial-T16-512"
    code, out, _ = run(capsys, "executorch", "-v", name, "-c", str(fixtures.checkpoint(name)))
    path = tmp_path / "artifacts" / name / f"{name}.fp32.pte"
    assert code == 0 and f"wrote artifacts/{name}/{name}.fp32.pte (fp32, xnnpack: 1 partition(s), 0 op(s) outside" in out
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, f"{path.name}.json"]
    assert json.loads((path.parent / f"{path.name}.json").read_text())["parity"]["cosine_mean"] >= 0.99999
    assert _independent_parity(fixtures, name, "tokens", path) >= 0.99999


@pytest.mark.parametrize("args, message", [
    (["--precision", "int4"], "unknown precision 'int4'; choose one of: fp32, fp16"),
    (["--delegate", "vulkan"], "unknown delegate 'vulkan'; choose one of: xnnpack, coreml"),
    (["--profile", "pe-lang-l14-cpu-edge"], "profile pe-lang-l14-cpu-edge is for PE-Lang-L14-448, not PE-Spatial-T16-512"),
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
