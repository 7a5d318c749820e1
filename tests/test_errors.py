"""The error taxonomy: exit codes by kind, and missing extras refused before any work."""

from __future__ import annotations

import importlib.util

import pytest

from pe_export import errors
from pe_export.cli import main


def test_exit_codes_by_kind():
    assert errors.CheckFailed("x").exit_code == 1
    assert errors.UsageError("x").exit_code == errors.CheckpointError("x").exit_code == errors.BadReport("x").exit_code == 2
    assert errors.TensorRTUnavailable("x").exit_code == errors.MissingExtra("x").exit_code == 3
    assert isinstance(errors.BadReport("x"), ValueError)


def test_require_extra_names_the_pip_command():
    errors.require_extra("quant", "fp16 variants", "json")  # present: nothing happens
    with pytest.raises(errors.MissingExtra, match=r"fp16 variants needs no_such\.module, which is not installed: "
                                                  r"pip install 'pe-export\[quant\]'"):
        errors.require_extra("quant", "fp16 variants", "no_such.module")


@pytest.fixture
def without(monkeypatch, forbid_loading):
    """Hide an installed module from find_spec, as if its extra were not installed."""
    real = importlib.util.find_spec

    def hide(name: str) -> None:
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda module, *a: None if module.split(".")[0] == name else real(module, *a))
        forbid_loading("started work before checking extras")

    return hide


@pytest.mark.parametrize("hidden, args, message", [
    ("modelopt", ["quantize", "-v", "PE-Spatial-T16-512", "--random-init", "--precision", "fp16"],
     "pip install 'pe-export[quant]'"),
    ("modelopt", ["bench", "-v", "PE-Spatial-T16-512", "--random-init", "--precision", "fp32,fp16"],
     "pip install 'pe-export[quant]'"),
    ("matplotlib", ["bench", "-v", "PE-Spatial-T16-512", "--random-init", "--plot", "p.png"],
     "--plot needs matplotlib"),
    ("openvino", ["openvino", "-v", "PE-Spatial-T16-512", "--random-init"], "pip install 'pe-export[openvino]'"),
    ("openvino", ["bench", "-v", "PE-Spatial-T16-512", "--random-init", "--backends", "torch,openvino"],
     "the OpenVINO runtime needs openvino"),
    ("openvino", ["parity", "-v", "PE-Spatial-T16-512", "--random-init", "--backends", "openvino", "m.onnx"],
     "pip install 'pe-export[openvino]'"),
])
def test_missing_extras_exit_3_before_any_work(without, capsys, tmp_path, monkeypatch, hidden, args, message):
    monkeypatch.chdir(tmp_path)
    without(hidden)
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and message in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_bf16_on_a_cpu_without_bf16_units_exits_3_before_any_work(capsys, tmp_path, monkeypatch, forbid_loading):
    from pe_export.runners import openvino

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(openvino, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    forbid_loading("started work before checking the CPU")
    with pytest.raises(SystemExit) as exit_info:
        main(["openvino", "-v", "PE-Spatial-T16-512", "--random-init", "--precision", "bf16"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 3 and "this CPU has no bf16 units" in err and list(tmp_path.iterdir()) == []


def test_openvino_bf16_needs_no_modelopt(without):
    """OpenVINO's bf16 IR comes from the fp32 ONNX; onnxruntime's fp16 needs ModelOpt's conversion."""
    from pe_export.bench.bench import BenchSettings, check_request

    without("modelopt")
    check_request(BenchSettings(backends=["torch", "openvino"], precisions=["fp32", "bf16", "int8"]))
    with pytest.raises(errors.MissingExtra, match=r"pe-export\[quant\]"):
        check_request(BenchSettings(backends=["onnxruntime"], precisions=["fp16"]))
