"""`pe-export check` on small planted graphs: each violation is found, a clean graph passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pe_export.errors import UsageError
from pe_export.onnx.check import check_onnx

X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 8])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 8])


def _save(tmp_path: Path, nodes, opset=23, inits=(), extra_opsets=(), inputs=(X,), outputs=(Y,), name="m.onnx") -> Path:
    graph = helper.make_graph(nodes, "g", list(inputs), list(outputs), list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset), *extra_opsets])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def _problems(path, target):
    return [str(f) for f in check_onnx(path, target).findings]


def test_clean_graph_passes_every_target(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")], opset=17)
    for target in ("trt11", "trt10.15", "trt10", "jetson", "ort"):
        assert check_onnx(path, target).ok


def test_rotary_needs_trt_10_15(tmp_path):
    node = helper.make_node("RotaryEmbedding", ["x", "c", "s", "p"], ["y"], name="rope0", interleaved=1)
    path = _save(tmp_path, [node])
    assert check_onnx(path, "trt10.15").ok
    problems = _problems(path, "trt10")
    assert any("rope0: RotaryEmbedding needs TensorRT 10.15+" in p for p in problems)
    assert any("opset 23 is above" in p for p in problems)


def test_attention_needs_trt_10_14_and_one_output(tmp_path):
    one = helper.make_node("Attention", ["x", "x", "x"], ["y"], name="att1")
    many = helper.make_node("Attention", ["x", "x", "x"], ["y2", "pk", "pv"], name="att3")
    path = _save(tmp_path, [one, many], outputs=(Y, helper.make_tensor_value_info("y2", TensorProto.FLOAT, None)))
    assert _problems(path, "trt11") == ["att3: Attention with 3 outputs; TensorRT 11.x takes only the single-output "
                                        "form (no present_key/present_value/qk_matmul_output)"]
    assert check_onnx(path, "ort").ok
    assert len([p for p in _problems(path, "jetson") if "Attention needs TensorRT 10.14+" in p]) == 2


def test_custom_domains_control_flow_and_complex_types(tmp_path):
    ms = helper.make_node("FastGelu", ["x"], ["a"], name="fastgelu", domain="com.microsoft")
    then = helper.make_graph([helper.make_node("Identity", ["a"], ["t"])], "then", [], [helper.make_tensor_value_info("t", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    branch = helper.make_node("If", ["cond"], ["y"], name="branch", then_branch=then, else_branch=then)
    z = helper.make_tensor_value_info("z", TensorProto.COMPLEX64, [2])
    path = _save(tmp_path, [ms, branch], inits=[cond], extra_opsets=[helper.make_opsetid("com.microsoft", 1)],
                 outputs=(Y, z))
    problems = _problems(path, "ort")
    assert "fastgelu: com.microsoft::FastGelu is outside the standard ONNX domain" in problems
    assert "branch: If (control flow) has no place in a fixed-size encoder graph" in problems
    assert "z: complex-typed tensor" in problems


def test_missing_and_short_external_data(tmp_path):
    weights = [numpy_helper.from_array(np.full((64, 64), i, np.float32), f"w{i}") for i in range(5)]
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [X], [Y], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "ext.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    assert check_onnx(path, "jetson").ok
    data = tmp_path / "ext.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    assert "shorter than its tensors need" in _problems(path, "jetson")[0]
    data.unlink()
    report = check_onnx(path, "jetson")
    assert len(report.findings) == 5
    assert report.lines() == ["w0, w1 and 3 more: external data file ext.onnx.data is missing"]


def test_unreadable_inputs(tmp_path):
    with pytest.raises(UsageError, match="ONNX file not found"):
        check_onnx(tmp_path / "none.onnx", "trt11")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(UsageError, match="cannot read .* as ONNX"):
        check_onnx(bad, "trt11")
    with pytest.raises(UsageError, match="unknown target"):
        check_onnx(bad, "tensorrt")


@pytest.mark.parametrize("target, problems", [
    ("trt10.3", ["model: opset 23 is above TensorRT 10.3's highest (20)",
                 "rope0: RotaryEmbedding needs TensorRT 10.15+; TensorRT 10.3 cannot run it (export with --rope decomposed)",
                 "att: Attention needs TensorRT 10.14+; TensorRT 10.3 cannot run it (export with --attention decomposed)"]),
    ("trt10.14", ["rope0: RotaryEmbedding needs TensorRT 10.15+; TensorRT 10.14 cannot run it (export with --rope decomposed)"]),
    ("trt10.15", []),
    ("trt11.2", []),
])
def test_check_follows_each_tensorrt_release(tmp_path, target, problems):
    rope = helper.make_node("RotaryEmbedding", ["x", "c", "s", "p"], ["r"], name="rope0", interleaved=1)
    att = helper.make_node("Attention", ["r", "r", "r"], ["y"], name="att")
    assert _problems(_save(tmp_path, [rope, att]), target) == problems


def test_opset_limits_per_release(tmp_path):
    path = _save(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="relu")], opset=25)
    assert _problems(path, "trt11") == ["model: opset 25 is above TensorRT 11.x's highest (24)"]  # 25 came with 11.5
    assert _problems(path, "trt11.4") == ["model: opset 25 is above TensorRT 11.4's highest (24)"]
    assert check_onnx(path, "trt11.5").ok
    with pytest.raises(UsageError, match="TensorRT 9.2 is older than any release pe-export knows"):
        check_onnx(path, "trt9.2")


def test_many_nodes_with_one_problem_are_one_line(tmp_path):
    nodes = [helper.make_node("RotaryEmbedding", ["x", "c", "s", "p"], [f"r{i}"], name=f"block{i}/rotary") for i in range(6)]
    report = check_onnx(_save(tmp_path, [*nodes, helper.make_node("Relu", ["r5"], ["y"], name="relu")]), "trt10")
    assert len(report.findings) == 7
    assert report.lines() == [
        "model: opset 23 is above TensorRT 10.0-10.13's highest (20)",
        "block0/rotary, block1/rotary and 4 more: RotaryEmbedding needs TensorRT 10.15+; TensorRT 10.0-10.13 cannot "
        "run it (export with --rope decomposed)",
    ]
