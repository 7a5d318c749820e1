"""The TensorRT runner against the Runtime/ICudaEngine/IExecutionContext doubles and host memory: binding
by address, shape and profile checks, every refusal TensorRT reports, CUDA-graph replay, and the one
engine that parity and latency share."""

from __future__ import annotations

import json
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from pe_export.bench.backends import engine_artifact
from pe_export.bench.bench import BenchSettings, run_bench
from pe_export.bench.parity import run_parity
from pe_export.errors import PeExportError, TensorRTUnavailable, UsageError
from pe_export.model import ModelSource, load_model
from pe_export.onnx.spec import ExportResult
from pe_export.pipeline import Plan
from pe_export.pipeline.commands import trt_variant
from pe_export.precision.profiles import load_profile
from pe_export.runners.tensorrt import TrtRunner
from pe_export.runners.tensorrt_env import Gpu
from pe_export.trt.build import BuildSettings, build_engine

SPATIAL = "PE-Spatial-T16-512"
H200 = Gpu("NVIDIA H200", (9, 0))


@pytest.fixture
def engine(use_tensorrt, onnx_files, tmp_path):
    """An 11.0 engine of the fused T16 graph for batches 1 to 4."""
    use_tensorrt("11.0.0")
    return build_engine(onnx_files["fused"], BuildSettings(batch_min=1, batch_opt=2, batch_max=4), tmp_path / "e.engine", H200).path


def _images(count: int, size: int = 512) -> np.ndarray:
    return np.random.default_rng(count).uniform(-1, 1, (count, 3, size, size)).astype(np.float32)


def test_runner_binds_buffers_by_address(engine, host_memory, engine_output):
    with TrtRunner(engine, gpu=H200, memory=host_memory) as runner:
        assert (runner.input_name, runner.output_name, runner.batch_range) == ("pixel_values", "tokens", (1, 4))
        for count in (3, 1, 4):
            batch = _images(count)
            out = runner.run(batch)
            assert out.dtype == np.float32 and out.shape == (count, 1025, 192)
            np.testing.assert_allclose(out, engine_output(batch, 1025, 192), rtol=1e-6)
        assert runner.context.executions == 3 and runner.versions() == {"tensorrt": "11.0.0"}


def test_a_batch_outside_the_profile_is_one_clear_error(engine, host_memory):
    with TrtRunner(engine, gpu=H200, memory=host_memory) as runner:
        with pytest.raises(UsageError, match=r"^batch 5 is outside this engine's optimization profile \(batches 1-4\); "
                                             r"rebuild it with --batch MIN:OPT:MAX covering 5$"):
            runner.run(_images(5, 16))
        assert runner.context.executions == 0


def test_every_refusal_of_tensorrt_is_an_error(engine, host_memory, monkeypatch):
    with TrtRunner(engine, gpu=H200, memory=host_memory) as runner:
        with pytest.raises(UsageError, match=r"refused input shape \(1, 3, 448, 448\) for pixel_values; the engine takes \(-1, 3, 512, 512\)"):
            runner.run(_images(1, 448))
        context_type = type(runner.context)
        monkeypatch.setattr(context_type, "set_tensor_address", lambda self, name, memory: False)
        with pytest.raises(PeExportError, match="TensorRT refused the device address of pixel_values"):
            runner.run(_images(1))
        monkeypatch.undo()
        monkeypatch.setattr(context_type, "execute_async_v3", lambda self, stream: False)
        with pytest.raises(PeExportError, match="execute_async_v3 failed"):
            runner.run(_images(1))


def test_cuda_graph_replay_captures_once_per_shape(engine, host_memory, engine_output):
    with TrtRunner(engine, cuda_graph=True, gpu=H200, memory=host_memory) as runner:
        first, second = _images(2), _images(2) * 0.5
        np.testing.assert_allclose(runner.run(first), engine_output(first, 1025, 192), rtol=1e-6)
        np.testing.assert_allclose(runner.run(second), engine_output(second, 1025, 192), rtol=1e-6)  # replayed, new input
        assert host_memory.captures == 1
        runner.run(_images(3))
        assert host_memory.captures == 2 and runner.context.executions == 5  # a warm-up run per capture, a replay per batch


def test_engines_the_runtime_cannot_load(use_tensorrt, onnx_files, host_memory, tmp_path):
    use_tensorrt("11.0.0")
    portable = build_engine(onnx_files["fused"], BuildSettings(version_compatible=True), tmp_path / "p.engine", H200).path
    plain = build_engine(onnx_files["fused"], BuildSettings(), tmp_path / "e.engine", H200).path
    use_tensorrt("11.1.0")
    with TrtRunner(portable, gpu=H200, memory=host_memory) as runner:  # loads only with engine host code allowed
        assert runner.run(_images(1)).shape == (1, 1025, 192)
    with pytest.raises(TensorRTUnavailable, match="built with TensorRT 11.0.0, this is 11.1.0"):
        TrtRunner(plain, gpu=H200, memory=host_memory)
    use_tensorrt("11.0.0")
    plain.write_bytes(b"not a plan")
    with pytest.raises(TensorRTUnavailable, match="TensorRT 11.0.0 could not load .*e.engine; rebuild it"):
        TrtRunner(plain, gpu=H200, memory=host_memory)


def test_engine_io_types_come_from_the_onnx(use_tensorrt, host_memory, engine_output, onnx_files, tmp_path):
    """A half-precision I/O graph gives a HALF engine; the runner feeds fp16 and returns fp32."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [-1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [-1, 4, 6])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"], name="id")], "g", [x], [y])
    path = tmp_path / "half.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    use_tensorrt("11.0.0")
    stand_in = ExportResult(path, onnx_files["fused"].manifest)  # an upstream to key on; the network is the file's
    result = build_engine(stand_in, BuildSettings(batch_max=2), tmp_path / "half.engine", H200)
    assert [t.dtype for t in result.manifest.inputs + result.manifest.outputs] == ["HALF", "HALF"]
    with TrtRunner(result.path, gpu=H200, memory=host_memory) as runner:
        batch = _images(2, 8)
        assert runner.input_dtype == np.float16 and runner.output_dtype == np.float16
        out = runner.run(batch)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, engine_output(batch.astype(np.float16), 4, 6), rtol=1e-3)


def test_parity_and_latency_run_one_engine(use_tensorrt, gpu_machine, fixtures, tmp_path, monkeypatch):
    """`pe-export trt --profile`, parity and `bench --backends tensorrt --profile` share one build."""
    monkeypatch.chdir(tmp_path)
    profile_file = tmp_path / "t16.yaml"
    profile_file.write_text(f"name: t16\nvariant: {SPATIAL}\nbatch: {{min: 1, opt: 2, max: 4}}\n")
    trt = use_tensorrt("11.0.0")
    source = ModelSource(SPATIAL, fixtures.checkpoint(SPATIAL))
    built = trt_variant(source, "fp32", profile=profile_file)
    loaded = load_model(SPATIAL, fixtures.checkpoint(SPATIAL))
    for_parity = engine_artifact(Plan.of(loaded, load_profile(profile_file)), "fp32", [1, 2])
    assert for_parity == built.path
    row = run_parity(loaded, [for_parity], synthetic=3).results[0]
    assert row.backend == "tensorrt" and row.passed is False  # the double computes no PE: it fails honestly
    settings = BenchSettings(backends=["tensorrt"], batches=[1, 2], warmup=0, iters=1, profile=str(profile_file))
    report = run_bench(loaded, settings)
    assert [(r.backend, r.batch) for r in report.results] == [("tensorrt", 1), ("tensorrt", 2)]
    assert sum(c[0] == "build_serialized_network" for c in trt.calls) == 1
    wider = BenchSettings(backends=["tensorrt"], batches=[1, 8], warmup=0, iters=1, profile=str(profile_file))
    assert [r.batch for r in run_bench(loaded, wider).results] == [1, 8]  # one rebuild, covering batch 8
    assert sum(c[0] == "build_serialized_network" for c in trt.calls) == 2
    assert json.loads(built.path.with_name(built.path.name + ".json").read_text())["settings"]["batch_max"] == 8


def test_parity_runs_an_engine_within_its_batch_range(use_tensorrt, gpu_machine, onnx_files, fixtures, tmp_path):
    """A batch-1 engine (the Jetson profile's range) is scored one image at a time."""
    use_tensorrt("11.0.0")
    path = build_engine(onnx_files["fused"], BuildSettings(), tmp_path / "one.engine", H200).path
    loaded = load_model(SPATIAL, fixtures.checkpoint(SPATIAL))
    row = run_parity(loaded, [path], synthetic=3).results[0]
    assert row.cosine_mean is not None and row.passed is False
