"""Triton model repositories: every config.pbtxt parses with Triton's own ModelConfig schema (the
tritonclient package's protobuf) and says what the artifact is; the served file runs as the artifact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pe_export.artifacts import Digests
from pe_export.cli import main
from pe_export.errors import UsageError
from pe_export.manifests import EngineManifest, seal, write_manifest
from pe_export.model import load_model
from pe_export.onnx import export as export_module
from pe_export.onnx.export import ExportOptions, export_onnx
from pe_export.runners import open_runner
from pe_export.serving import repository as repository_module
from pe_export.serving.repository import ServingOptions, model_repository
from pe_export.validate import compare

SPATIAL = "PE-Spatial-T16-512"
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="the serve extra is not installed")


def _parsed(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())  # raises on anything Triton would refuse


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A T16 export whose weights live in external data, as every large model's do."""
    folder = tmp_path_factory.mktemp("serving")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
        return export_onnx(load_model(SPATIAL, random_init=True), ExportOptions(target="ort"), folder / "m.onnx").path


def test_onnx_repository_config_and_files(exported, tmp_path):
    options = ServingOptions(instance_kind="cpu", instances=2, preferred_batch_sizes=[2, 4], max_batch_size=4)
    result = model_repository(exported, tmp_path / "models", options)
    config = _parsed(result.config.read_text())
    assert (config.name, config.platform, config.max_batch_size) == ("pe-spatial-t16-512-fp32-onnx", "onnxruntime_onnx", 4)
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input] == [
        ("pixel_values", "TYPE_FP32", [3, 512, 512])]
    assert [(o.name, list(o.dims)) for o in config.output] == [("tokens", [1025, 192])]
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 4]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    group = config.instance_group[0]
    assert (model_config_pb2.ModelInstanceGroup.Kind.Name(group.kind), group.count) == ("KIND_CPU", 2)
    assert {k: v.string_value for k, v in config.parameters.items()} == {
        "pe_export.variant": SPATIAL, "pe_export.precision": "fp32", "pe_export.artifact": "m.onnx"}
    version = result.model_dir / "1"
    assert sorted(p.name for p in version.iterdir()) == ["m.onnx.data", "model.onnx"]
    x = np.random.default_rng(0).uniform(-1, 1, (2, 3, 512, 512)).astype(np.float32)
    with open_runner(version / "model.onnx") as served, open_runner(exported) as original:
        assert compare(original.run(x), served.run(x)).max_abs == 0.0


def test_engine_repository_takes_its_profile(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    fields = {"variant": "PE-Lang-L14-448", "precision": "int8", "tensorrt": "11.0.0",
              "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"}, "timing_cache": None,
              "settings": {"batch_min": 1, "batch_opt": 8, "batch_max": 32}, "options": {},
              "source_onnx": {"path": "m.int8.onnx", "identity": "0" * 64}, "build_seconds": 1.0, "engine_bytes": 4,
              "inputs": [{"name": "pixel_values", "shape": [-1, 3, 448, 448], "dtype": "FLOAT"}],
              "outputs": [{"name": "tokens", "shape": [-1, 1025, 1024], "dtype": "FLOAT"}]}
    write_manifest(tmp_path / "m.engine.json", EngineManifest(**seal(fields, {"onnx": "0" * 64}, Digests().files([engine]))))
    config = _parsed(model_repository(engine, tmp_path / "models", ServingOptions(instance_kind="cpu")).text)
    assert (config.platform, config.max_batch_size, list(config.dynamic_batching.preferred_batch_size)) == (
        "tensorrt_plan", 32, [8, 32])
    assert model_config_pb2.ModelInstanceGroup.Kind.Name(config.instance_group[0].kind) == "KIND_GPU"
    assert (tmp_path / "models" / "pe-lang-l14-448-int8-trt" / "1" / "model.plan").read_bytes() == b"plan"
    with pytest.raises(UsageError, match="takes batches up to 32"):
        model_repository(engine, tmp_path / "models", ServingOptions(max_batch_size=64))


def test_static_batch_and_accelerator(tmp_path):
    static = export_onnx(load_model(SPATIAL, random_init=True), ExportOptions(target="ort", batch=2), tmp_path / "s.onnx")
    config = _parsed(model_repository(static.path, tmp_path / "models", ServingOptions(tensorrt_accelerator=True)).text)
    assert config.max_batch_size == 0 and list(config.input[0].dims) == [2, 3, 512, 512]
    assert not config.HasField("dynamic_batching")
    assert config.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    with pytest.raises(UsageError, match="takes batches of exactly 2"):  # --images sends one image per request
        model_repository(static.path, tmp_path / "images", ServingOptions(images=True))
    assert not (tmp_path / "images").exists()


def test_images_adds_a_preprocessing_model_and_an_ensemble(exported, tmp_path):
    models = tmp_path / "models"
    model_repository(exported, models, ServingOptions(name="pe", instance_kind="cpu", images=True))
    assert sorted(p.name for p in models.iterdir()) == ["pe", "pe_images", "pe_preprocess"]
    preprocess = _parsed((models / "pe_preprocess" / "config.pbtxt").read_text())
    assert (preprocess.backend, preprocess.max_batch_size) == ("python", 0)
    assert [(i.name, model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in preprocess.input] == [
        ("image", "TYPE_UINT8", [-1])]
    assert [(o.name, list(o.dims)) for o in preprocess.output] == [("pixels", [1, 3, 512, 512])]
    assert preprocess.parameters["pe_export.image_size"].string_value == "512"
    assert preprocess.parameters["pe_export.max_tiles"].string_value == "0"  # one image, no tiles
    assert (models / "pe_preprocess" / "1" / "model.py").read_text() == (
        Path(repository_module.__file__).with_name("preprocess_model.py").read_text())
    ensemble = _parsed((models / "pe_images" / "config.pbtxt").read_text())
    assert (ensemble.platform, [s.model_name for s in ensemble.ensemble_scheduling.step]) == (
        "ensemble", ["pe_preprocess", "pe"])
    assert dict(ensemble.ensemble_scheduling.step[1].input_map) == {"pixel_values": "pixels"}
    assert [(o.name, list(o.dims)) for o in ensemble.output] == [("tokens", [1, 1025, 192])]


def test_a_new_repository_replaces_the_old_model_folder_whole(exported, tmp_path, capsys):
    models = tmp_path / "models"
    with pytest.raises(SystemExit) as first:
        main(["triton", str(exported), "-r", str(models), "--name", "pe", "--kind", "cpu"])
    stale = models / "pe" / "1" / "stale.txt"
    stale.write_text("left from before")
    with pytest.raises(SystemExit) as second:
        main(["triton", str(exported), "-r", str(models), "--name", "pe", "--kind", "cpu", "--max-batch", "2"])
    assert first.value.code == second.value.code == 0 and not stale.exists()
    assert _parsed((models / "pe" / "config.pbtxt").read_text()).max_batch_size == 2
    assert sorted(p.name for p in models.iterdir()) == ["pe"]


@pytest.mark.parametrize("args, message", [
    (["{missing}"], "has no manifest"),
    (["{exported}", "--name", "a/b"], "model name 'a/b'"),
    (["{exported}", "--max-batch", "2", "--preferred", "4"], "preferred batch sizes"),
    (["{exported}", "--kind", "tpu"], "unknown instance kind 'tpu'"),
])
def test_bad_serving_requests(exported, tmp_path, capsys, args, message):
    argv = [str(exported) if a == "{exported}" else str(tmp_path / "none.onnx") if a == "{missing}" else a for a in args]
    with pytest.raises(SystemExit) as exit_info:
        main(["triton", *argv, "-r", str(tmp_path / "models")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "models").exists()
