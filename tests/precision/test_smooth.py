"""Outlier smoothing on small hand-made LayerNorm -> MatMul graphs: which pairs fold, the scales, the
fold itself (same function, outliers moved into the weights) and the ranges taken after it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pe_export.precision import qdq, smooth
from pe_export.precision.calibrate import activation_ranges
from pe_export.precision.profiles import QuantSection
from pe_export.runners.onnxruntime import OrtRunner

RNG = np.random.default_rng(1)
WIDTH = 8
GAMMA = np.ones(WIDTH, np.float32) + 0.1 * RNG.standard_normal(WIDTH).astype(np.float32)
GAMMA[[2, 5]] *= 50  # two outlier channels, as real CLIP towers have
BETA = 0.1 * RNG.standard_normal(WIDTH).astype(np.float32)
W = RNG.standard_normal((WIDTH, 16)).astype(np.float32) / 3
W[[2, 5]] /= 50  # the Linear after the LayerNorm compensates them


def _graph() -> onnx.ModelProto:
    """ln (outlier channels) -> fc; ln2 -> fc2 and a residual Add; ln3 -> a MatMul whose weight is shared."""
    nodes = [
        helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["n"], "ln", axis=-1),
        helper.make_node("MatMul", ["n", "w"], ["y"], "fc"),
        helper.make_node("LayerNormalization", ["x", "gamma2", "beta2"], ["n2"], "ln2", axis=-1),
        helper.make_node("MatMul", ["n2", "w2"], ["y2"], "fc2"),
        helper.make_node("Add", ["x", "n2"], ["r"], "residual"),
        helper.make_node("LayerNormalization", ["x", "gamma3", "beta3"], ["n3"], "ln3", axis=-1),
        helper.make_node("MatMul", ["n3", "w3"], ["y3"], "fc3"),
        helper.make_node("MatMul", ["x", "w3"], ["y4"], "fc4"),
    ]
    initializers = [numpy_helper.from_array(v, name) for name, v in (
        ("gamma", GAMMA), ("beta", BETA), ("w", W), ("gamma2", GAMMA), ("beta2", BETA), ("w2", W),
        ("gamma3", GAMMA), ("beta3", BETA), ("w3", W))]
    outputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "y2", "r", "y3", "y4")]
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, WIDTH])],
                              outputs, initializers)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))


def test_only_exact_folds_into_quantized_matmuls_are_pairs():
    graph = _graph().graph
    sites = qdq.plan(graph, QuantSection(op_types=["MatMul"]))
    # ln2's output also feeds a residual Add, ln3's MatMul shares its weight with fc4: neither folds exactly
    assert smooth.pairs(graph, sites) == [smooth.Pair("ln", "n", "gamma", "beta", ("w",))]
    assert smooth.pairs(graph, qdq.plan(graph, QuantSection(op_types=["MatMul"], exclude=["^fc$"]))) == []


def test_scales_follow_the_smoothquant_formula():
    scales = smooth.scales(np.array([100.0, 1.0, 0.0]), np.array([0.01, 4.0, 1.0]), 0.5)
    np.testing.assert_allclose(scales, [100.0, 0.5, np.sqrt(1e-5)])  # sqrt(max|X| / max|W|), floors at 1e-5
    np.testing.assert_allclose(smooth.scales(np.array([9.0]), np.array([3.0]), 1.0), [9.0])  # a=1: all to weights


def test_fold_keeps_the_function_and_moves_the_outliers_into_the_weights(tmp_path):
    model = _graph()
    x = RNG.standard_normal((6, 4, WIDTH)).astype(np.float32)
    before_path, after_path = tmp_path / "before.onnx", tmp_path / "after.onnx"
    onnx.save(model, str(before_path))
    normalized = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * GAMMA + BETA
    channel_max = np.abs(normalized).reshape(-1, WIDTH).max(0)
    [pair] = smooth.pairs(model.graph, qdq.plan(model.graph, QuantSection(op_types=["MatMul"])))
    weight_max = smooth.weight_row_max(model.graph, pair, tmp_path)
    np.testing.assert_allclose(weight_max, np.abs(W).max(1))
    scales = smooth.scales(channel_max, weight_max, 0.5)
    smooth.fold(model, [pair], {"n": scales})
    onnx.save(model, str(after_path))
    before, after = OrtRunner(before_path).session, OrtRunner(after_path).session
    np.testing.assert_allclose(after.run(["y"], {"x": x})[0], before.run(["y"], {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert smooth.outlier_ratio(channel_max) > 30 and smooth.outlier_ratio(channel_max / scales) < 3
    folded = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    np.testing.assert_allclose(folded["gamma"], GAMMA / scales, rtol=1e-6)
    np.testing.assert_allclose(folded["w"], W * scales[:, None], rtol=1e-6)
    np.testing.assert_array_equal(folded["gamma2"], GAMMA)  # the pair that does not fold is left alone


@pytest.mark.parametrize("method", ["max", "entropy"])
def test_smoothed_tensors_are_ranged_after_the_division(tmp_path, method):
    model = _graph()
    path = tmp_path / "ln.onnx"
    onnx.save(model, str(path))
    x = RNG.standard_normal((5, 4, WIDTH)).astype(np.float32)
    weight_max = {"n": np.abs(W).max(1)}
    ranges = activation_ranges(path, x, 2, method, ["n", "x"], "x", tmp_path, smoothing=(0.5, weight_max))
    normalized = (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + 1e-5) * GAMMA + BETA
    channel_max = np.abs(normalized).reshape(-1, WIDTH).max(0)
    np.testing.assert_allclose(ranges.channel_max["n"], channel_max, rtol=1e-5)
    np.testing.assert_allclose(ranges.scales["n"], smooth.scales(channel_max, weight_max["n"], 0.5), rtol=1e-5)
    smoothed_max = float(np.max(channel_max / ranges.scales["n"]))
    if method == "max":
        assert ranges.amax == {"n": pytest.approx(smoothed_max, rel=1e-5), "x": pytest.approx(np.abs(x).max(), rel=1e-6)}
    else:  # entropy clips the tail of the smoothed values, never reaching past their maximum
        assert 0.3 * smoothed_max < ranges.amax["n"] <= smoothed_max * 1.001
    assert smoothed_max < float(channel_max.max()) / 5  # the range no longer spent on two channels


def test_external_weights_are_read_where_they_lie(tmp_path):
    """Models past 512 MB keep their weights in a .data file: calibration reads it in place (no copy
    in the work folder) and gives the same ranges and scales as with the weights inside the model."""
    x = RNG.standard_normal((3, 4, WIDTH)).astype(np.float32)
    embedded, external = tmp_path / "embedded" / "ln.onnx", tmp_path / "external" / "ln.onnx"
    for path in (embedded, external):
        path.parent.mkdir()
    onnx.save(_graph(), str(embedded))
    onnx.save(_graph(), str(external), save_as_external_data=True, location="ln.onnx.data", size_threshold=64)
    assert (external.parent / "ln.onnx.data").stat().st_size >= W.nbytes
    results = []
    for path in (embedded, external):
        work = path.parent / "work"
        work.mkdir()
        results.append(activation_ranges(path, x, 2, "entropy", ["n", "x"], "x", work,
                                         smoothing=(0.5, {"n": np.abs(W).max(1)})))
        assert not [p for p in work.iterdir() if p.suffix in (".onnx", ".data")]
    assert sorted(p.name for p in external.parent.iterdir()) == ["ln.onnx", "ln.onnx.data", "work"]
    assert results[0].amax == results[1].amax
    np.testing.assert_array_equal(results[0].scales["n"], results[1].scales["n"])
