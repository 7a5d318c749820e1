"""The sensitivity emulation on a small hand-made graph: every configuration of the site switches
computes what the real Q/DQ model with those sites computes, for MatMuls of 3-D and 2-D inputs and
convolutions alike."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pe_export.precision import qdq, sensitivity
from pe_export.precision.profiles import QuantSection
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import compare

RNG = np.random.default_rng(2)
CONV = RNG.standard_normal((8, 3, 2, 2)).astype(np.float32)
W1 = RNG.standard_normal((8, 16)).astype(np.float32)
W2 = RNG.standard_normal((16, 8)).astype(np.float32) * np.linspace(0.1, 3, 8, dtype=np.float32)


def _graph() -> onnx.ModelProto:
    """x (B, 3, 4, 4) -> Conv -> tokens (B, 4, 8) -> MatMul W1 -> Relu -> mean over tokens (B, 16)
    -> MatMul W2 (a 2-D input) -> y."""
    nodes = [
        helper.make_node("Conv", ["x", "conv_w"], ["c"], "patch/conv", strides=[2, 2], kernel_shape=[2, 2]),
        helper.make_node("Reshape", ["c", "shape"], ["c3"], "patch/reshape"),
        helper.make_node("Transpose", ["c3"], ["tokens"], "patch/transpose", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["tokens", "w1"], ["h0"], "mlp/fc1"),
        helper.make_node("Relu", ["h0"], ["h"], "mlp/act"),
        helper.make_node("ReduceMean", ["h", "axes"], ["pooled"], "pool", keepdims=0),
        helper.make_node("MatMul", ["pooled", "w2"], ["y"], "head/proj"),
    ]
    initializers = [numpy_helper.from_array(CONV, "conv_w"), numpy_helper.from_array(W1, "w1"),
                    numpy_helper.from_array(W2, "w2"), numpy_helper.from_array(np.array([0, 8, 4], np.int64), "shape"),
                    numpy_helper.from_array(np.array([1], np.int64), "axes")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 8])], initializers)
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))


@pytest.mark.parametrize("precision", ["int8", "fp8"])
def test_each_configuration_computes_what_the_real_qdq_model_computes(tmp_path, precision):
    x = RNG.standard_normal((5, 3, 4, 4)).astype(np.float32)
    model = _graph()
    sites = qdq.plan(model.graph, QuantSection(op_types=["MatMul", "Conv"]))
    amax = {"x": 3.0, "tokens": 4.0, "pooled": 2.5}
    emulator = sensitivity.Emulator(_graph(), sites, amax, precision, tmp_path, external=False)
    assert emulator.nodes == ["patch/conv", "mlp/fc1", "head/proj"]
    configs = [frozenset(), frozenset(emulator.nodes), *(frozenset({n}) for n in emulator.nodes)]
    reference = OrtRunner(tmp_path / "emulation.onnx").session.run(None, {"x": x, sensitivity.MASK: np.zeros(3, bool)})[0]
    scores = emulator.score(configs, x, reference)
    for config, score in zip(configs, scores):
        real = _graph()
        qdq.insert_qdq(real, [s for s in sites if s.node in config], amax, precision)
        onnx.save(real, str(tmp_path / "real.onnx"))
        expected = OrtRunner(tmp_path / "real.onnx").run(x)
        got = emulator.session.run(None, {"x": x, sensitivity.MASK: np.array([n in config for n in emulator.nodes])})[0]
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4, err_msg=str(sorted(config)))
        assert score.cosine_mean == pytest.approx(compare(reference, expected).cosine_mean, abs=1e-6)
    assert scores[0].max_abs < 1e-5 < 1e-3 < scores[1].max_abs  # nothing quantized is the fp32 graph itself


def test_ranking_macs_and_exclusion_patterns(tmp_path):
    model = _graph()
    sites = qdq.plan(model.graph, QuantSection(op_types=["MatMul", "Conv"]))
    emulator = sensitivity.Emulator(model, sites, {"x": 3.0, "tokens": 4.0, "pooled": 2.5}, "int8", tmp_path, False)
    # MACs per image: conv 8 outputs x 2 x 2 positions x 3 x 2 x 2; fc1 4 tokens x 8 x 16; proj 16 x 8
    assert emulator.gmacs == {"patch/conv": 384e-9, "mlp/fc1": 512e-9, "head/proj": 128e-9}
    x = RNG.standard_normal((2, 3, 4, 4)).astype(np.float32)
    reference = emulator.session.run(None, {"x": x, sensitivity.MASK: np.zeros(3, bool)})[0]
    baselines, alone = sensitivity.rank(emulator, "alone", x, reference)
    assert baselines["fp32"].cosine_mean == pytest.approx(1.0) and baselines["all quantized"].cosine_mean < 1
    assert [s.cosine_mean for s in alone] == sorted(s.cosine_mean for s in alone)  # most damaging first
    _, kept = sensitivity.rank(emulator, "kept", x, reference)
    assert [s.cosine_mean for s in kept] == sorted((s.cosine_mean for s in kept), reverse=True)
    assert {s.site for s in kept} == set(emulator.nodes)
    patterns = sensitivity.exclusion_patterns(["mlp/fc1", "a.b(c)"])
    assert patterns == [r"^mlp/fc1$", r"^a\.b\(c\)$"]
    assert re.search(patterns[1], "a.b(c)") and not re.search(patterns[1], "axb(c)")
