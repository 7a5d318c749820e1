"""One runner factory over torch modules and artifact files, and the backend table."""

from __future__ import annotations

import copy

import pytest
import torch

from pe_export.errors import UsageError
from pe_export.model import load_model
from pe_export.model.head import OutputHead
from pe_export.onnx.export import ExportOptions, export_onnx
from pe_export.runners import BACKENDS, Runner, open_runner
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.runners.torch import TorchRunner
from pe_export.validate import PARITY_SEED, compare, seeded_batch

SPATIAL = "PE-Spatial-T16-512"


@pytest.fixture(scope="module")
def spatial(fixtures):
    return load_model(SPATIAL, fixtures.checkpoint(SPATIAL))


@pytest.fixture(scope="module")
def exported(spatial, tmp_path_factory):
    return export_onnx(spatial, ExportOptions(target="ort"), tmp_path_factory.mktemp("runners") / "m.onnx").path


def test_module_and_artifact_runners_agree(fixtures, spatial, exported):
    x = fixtures.outputs(SPATIAL)["input"]
    with open_runner(OutputHead(spatial.model).eval()) as torch_runner, open_runner(exported, threads=2) as ort_runner:
        assert isinstance(torch_runner, TorchRunner) and isinstance(ort_runner, OrtRunner)
        assert (torch_runner.backend, ort_runner.backend, ort_runner.precision) == ("torch", "onnxruntime", "fp32")
        reference = fixtures.outputs(SPATIAL)["forward"]
        assert compare(reference, torch_runner.run(x)).max_abs < 2e-5
        assert compare(reference, ort_runner.run(x)).cosine_min > 0.99999
        assert ort_runner.versions()["onnxruntime"] and torch_runner.device()
    assert ort_runner.session is None and torch_runner.module is None  # closed on leaving the block


def test_bf16_torch_runner_autocasts_and_keeps_the_reference_module_fp32(spatial):
    head = OutputHead(spatial.model).eval()
    x = seeded_batch(spatial.variant, 1, PARITY_SEED)
    reference = open_runner(head).run(x)
    with open_runner(head, precision="bf16") as runner:
        autocast = compare(reference, runner.run(x))
    with torch.no_grad():  # what a bf16 copy of the weights gives: norms and softmax in bf16 too
        converted = compare(reference, copy.deepcopy(head).bfloat16()(torch.from_numpy(x).bfloat16()).float().numpy())
    assert 0.9999 < autocast.cosine_mean < 1.0 and autocast.rel_l2 < converted.rel_l2
    assert str(next(head.parameters()).dtype) == "torch.float32"


def test_bad_artifacts_are_one_line_errors(tmp_path, exported):
    with pytest.raises(UsageError, match="unknown artifact type '.txt'"):
        open_runner(tmp_path / "model.txt")
    with pytest.raises(UsageError, match="artifact not found"):
        open_runner(tmp_path / "missing.onnx")
    copy = tmp_path / "m.onnx"
    copy.write_bytes(exported.read_bytes())
    (tmp_path / "m.onnx.json").write_text("{not json")
    with pytest.raises(UsageError, match="cannot read the manifest"):
        open_runner(copy)


def test_torch_refuses_precisions_it_cannot_compute(spatial):
    with pytest.raises(UsageError, match="torch has no int8 compute"):
        open_runner(OutputHead(spatial.model), precision="int8")


def test_backend_table():
    assert [p for p in ("fp32", "fp16", "bf16", "int8", "fp8") if BACKENDS["torch"].runs(p)] == ["fp32", "fp16", "bf16"]
    assert not BACKENDS["onnxruntime"].runs("bf16") and BACKENDS["onnxruntime"].runs("int8")
    assert all(BACKENDS["tensorrt"].runs(p) for p in ("fp32", "fp16", "bf16", "int8", "fp8"))
    assert all(issubclass(cls, Runner) for cls in (TorchRunner, OrtRunner))


def test_cpu_name_lists_the_matrix_instructions(monkeypatch, tmp_path):
    from pe_export.runners import device

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Test CPU\nflags\t\t: fpu avx512_bf16 sse amx_int8\n\n"
                       "processor\t: 1\nmodel name\t: Other\n")
    monkeypatch.setattr(device, "CPUINFO", cpuinfo)
    assert device.cpu_name().startswith("Test CPU (") and device.cpu_name().endswith("; amx_int8, avx512_bf16)")
    cpuinfo.write_text("model name\t: Old CPU\nflags\t\t: fpu sse avx2\n")
    assert device.cpu_name().endswith("; no bf16/int8 matrix instructions)")
