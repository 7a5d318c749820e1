"""Q/DQ placement and streamed calibration ranges on small hand-made graphs, against numpy references."""

from __future__ import annotations

import json
import subprocess
import sys

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pe_export.errors import PeExportError
from pe_export.precision import qdq
from pe_export.precision.calibrate import activation_ranges
from pe_export.precision.profiles import QuantSection
from pe_export.runners.onnxruntime import OrtRunner

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((8, 16)).astype(np.float32)
W2 = RNG.standard_normal((16, 8)).astype(np.float32) * np.linspace(0.01, 3, 8, dtype=np.float32)  # uneven channels


def _mlp(opset: int = 23) -> onnx.ModelProto:
    """x (B, 4, 8) -> MatMul W1 -> Relu -> MatMul W2 -> y, plus h·hᵀ (an activation-by-activation MatMul)."""
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"], "blocks.0/fc1"),
        helper.make_node("Relu", ["h0"], ["h"], "blocks.0/act"),
        helper.make_node("MatMul", ["h", "w2"], ["y"], "blocks.1/fc2"),
        helper.make_node("Transpose", ["h"], ["ht"], "attn/t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["h", "ht"], ["scores"], "attn/qk"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, 8]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", 4, 4])],
        [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model)


def _fake_quant(x: np.ndarray, scale: np.ndarray, precision: str) -> np.ndarray:
    if precision == "int8":
        return np.clip(np.round(x / scale), -128, 127) * scale
    return (x / scale).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * scale


def test_plan_selects_weighted_nodes_honours_exclusions_and_attention_switch():
    graph = _mlp().graph
    sites = qdq.plan(graph, QuantSection(op_types=["MatMul"]))
    assert sites == [qdq.Site("blocks.0/fc1", 0, "x"), qdq.Site("blocks.0/fc1", 1, "w1", 1),
                     qdq.Site("blocks.1/fc2", 0, "h"), qdq.Site("blocks.1/fc2", 1, "w2", 1)]
    assert qdq.activations(sites) == ["h", "x"]
    excluded = qdq.plan(graph, QuantSection(op_types=["MatMul"], exclude=[r"^blocks\.1/"]))
    assert [s.node for s in excluded] == ["blocks.0/fc1"] * 2
    with_attention = qdq.plan(graph, QuantSection(op_types=["MatMul"], quantize_attention=True))
    assert with_attention[-2:] == [qdq.Site("attn/qk", 0, "h"), qdq.Site("attn/qk", 1, "ht")]
    assert qdq.plan(graph, QuantSection(op_types=["Conv"])) == []


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_inserted_qdq_computes_the_fake_quantized_reference(tmp_path, precision):
    model = _mlp()
    x = RNG.standard_normal((3, 4, 8)).astype(np.float32)
    h = np.maximum(x @ W1, 0)
    amax = {"x": float(np.abs(x).max()), "h": float(np.abs(h).max())}
    sites = qdq.plan(model.graph, QuantSection(op_types=["MatMul"]))
    assert qdq.insert_qdq(model, sites, amax, precision) == 4  # x, h and both weights
    onnx.checker.check_model(model, full_check=True)
    path = tmp_path / "q.onnx"
    onnx.save(model, str(path))

    qmax = qdq.QMAX[precision]
    w1_scale = np.abs(W1).max(axis=0) / qmax  # per output channel
    w2_scale = np.abs(W2).max(axis=0) / qmax
    h_ref = np.maximum(_fake_quant(x, amax["x"] / qmax, precision) @ _fake_quant(W1, w1_scale, precision), 0)
    y_ref = _fake_quant(h_ref, amax["h"] / qmax, precision) @ _fake_quant(W2, w2_scale, precision)
    y = OrtRunner(path).run(x)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    assert np.abs(y - np.maximum(x @ W1, 0) @ W2).max() > 1e-4  # really quantized, not passed through


def test_missing_range_is_refused():
    model = _mlp()
    sites = qdq.plan(model.graph, QuantSection(op_types=["MatMul"]))
    with pytest.raises(PeExportError, match="no range for 1 tensors, e.g. h; the fp32 ONNX lacks"):
        qdq.insert_qdq(model, sites, {"x": 1.0}, "int8")


def test_streamed_ranges_cover_every_batch(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), str(path))
    data = RNG.standard_normal((5, 4, 8)).astype(np.float32)
    data[4] *= 10  # the largest values sit in the last, partial batch
    ranges = activation_ranges(path, data, 2, "max", ["h", "x"], "x", tmp_path).amax
    h = np.maximum(data @ W1, 0)
    assert ranges == {"x": pytest.approx(np.abs(data).max(), rel=1e-6), "h": pytest.approx(h.max(), rel=1e-6)}
    entropy = activation_ranges(path, data, 2, "entropy", ["h", "x"], "x", tmp_path).amax
    assert 0 < entropy["h"] <= h.max() * 1.001


@pytest.mark.parametrize("method", ["max", "entropy"])
def test_streamed_ranges_equal_onnxruntime_calibrators(tmp_path, method):
    """Only the tensors placement needs leave the graph, batch by batch, and the ranges are exactly
    those of onnxruntime's own calibrator over every input and output of every MatMul (run in a
    fresh interpreter: ModelOpt, once imported, patches onnxruntime's calibrators)."""
    path = tmp_path / "mlp.onnx"
    onnx.save(_mlp(), str(path))
    data = RNG.standard_normal((5, 4, 8)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    ours = activation_ranges(path, data, 2, method, ["h", "x"], "x", tmp_path).amax
    reference = subprocess.run([sys.executable, "-c", _ONNXRUNTIME_RANGES, str(path), str(tmp_path), method],
                               capture_output=True, text=True, check=True)
    assert ours == json.loads(reference.stdout.splitlines()[-1])


_ONNXRUNTIME_RANGES = """
import json, sys
import numpy as np
from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

path, folder, method = sys.argv[1:]
data = np.load(f"{folder}/data.npy")
calibrator = create_calibrator(path, ["MatMul"], augmented_model_path=f"{folder}/augmented.onnx",
                               extra_options={"symmetric": True},
                               calibrate_method=CalibrationMethod.Entropy if method == "entropy" else CalibrationMethod.MinMax)
for start in range(0, len(data), 2):
    feeds = [{"x": data[start:start + 2]}]
    calibrator.collect_data(type("Reader", (), {"get_next": lambda self: feeds.pop() if feeds else None})())
ranges = calibrator.compute_data()
print(json.dumps({n: float(max(np.abs(v).max() for v in ranges[n].range_value)) for n in ("h", "x")}))
"""
