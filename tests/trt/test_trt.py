"""TensorRT stage up to the TensorRT call, against API-faithful doubles of 10.x and 11.x; real builds
where TensorRT and a GPU exist (marked `trt`)."""

from __future__ import annotations

import importlib.util
import json

import pytest

from pe_export.errors import PeExportError, UsageError
from pe_export.model import ModelSource, load_model
from pe_export.onnx.export import ExportOptions, export_onnx
from pe_export.precision.profiles import find_profile
from pe_export.runners.tensorrt import check_compatible
from pe_export.trt.build import BuildSettings, build_engine
from pe_export.trt.engine import build_settings, ensure_engine, trt_variant
from pe_export.validate import compare
from pe_export.errors import TensorRTUnavailable
from pe_export.runners.tensorrt_env import Gpu

SPATIAL = "PE-Spatial-T16-512"
H200 = Gpu("NVIDIA H200", (9, 0))


@pytest.fixture(scope="module")
def onnx_files(fixtures, tmp_path_factory):
    folder = tmp_path_factory.mktemp("trt")
    loaded = load_model(SPATIAL, fixtures.checkpoint(SPATIAL))
    return {
        "fused": export_onnx(loaded, ExportOptions(target="trt11"), folder / "fused.onnx").path,
        "decomposed": export_onnx(loaded, ExportOptions(target="trt10"), folder / "decomposed.onnx").path,
        "static": export_onnx(loaded, ExportOptions(target="trt10", batch=2), folder / "static.onnx").path,
    }


def test_the_11x_double_has_no_precision_flags(make_fake_tensorrt):
    trt = make_fake_tensorrt("11.0.0")
    for name in ("FP16", "BF16", "INT8", "FP8"):
        with pytest.raises(AttributeError):
            getattr(trt.BuilderFlag, name)
    with pytest.raises(AttributeError):
        trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    assert not hasattr(trt.Builder(trt.Logger()).create_builder_config(), "int8_calibrator")


def test_11x_build_maps_every_option(make_fake_tensorrt, read_plan, onnx_files, tmp_path):
    trt = make_fake_tensorrt("11.0.0")
    cache = tmp_path / "cache" / "tc.bin"
    cache.parent.mkdir()
    cache.write_bytes(b"old")
    settings = BuildSettings(precision="int8", batch_min=1, batch_opt=4, batch_max=16, workspace_gib=2, opt_level=5,
                             timing_cache=cache, hardware_compat="ampere+", version_compatible=True)
    result = build_engine(onnx_files["fused"], settings, tmp_path / "e.engine", trt=trt, gpu=H200)
    assert ("create_network", 0) in trt.calls  # strongly typed is the only mode on 11.x
    assert ("parse_from_file", str(onnx_files["fused"])) in trt.calls  # from the file: external data is found
    plan = read_plan(result.path)
    assert plan["flags"] == ["VERSION_COMPATIBLE"]  # no precision flag: precision lives in the graph
    assert plan["profile"] == {"pixel_values": [[1, 3, 512, 512], [4, 3, 512, 512], [16, 3, 512, 512]]}
    assert plan["workspace"] == 2 * 2**30 and plan["opt_level"] == 5 and plan["hardware_compat"] == "AMPERE_PLUS"
    assert cache.read_bytes() == b"old|tactics"  # loaded, then saved back
    meta = json.loads((tmp_path / "e.engine.json").read_text())
    assert meta["tensorrt"] == "11.0.0" and meta["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert meta["precision"] == "int8" and meta["engine_bytes"] == result.path.stat().st_size
    assert meta["inputs"] == [{"name": "pixel_values", "shape": [-1, 3, 512, 512], "dtype": "FLOAT"}]
    assert meta["outputs"][0]["shape"] == [-1, 1025, 192]
    import hashlib

    assert meta["onnx"]["sha256"] == hashlib.sha256(onnx_files["fused"].read_bytes()).hexdigest()
    assert meta["settings"]["timing_cache"] == str(cache) and meta["build_seconds"] >= 0


def test_10x_build_creates_a_strongly_typed_network(make_fake_tensorrt, read_plan, onnx_files, tmp_path):
    trt = make_fake_tensorrt("10.8.0")
    result = build_engine(onnx_files["decomposed"], BuildSettings(precision="fp16"), tmp_path / "e.engine", trt=trt, gpu=H200)
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("create_network", strongly) in trt.calls
    assert read_plan(result.path)["flags"] == []  # BuilderFlag.FP16 exists on 10.x, and is still never set


def test_dla_with_gpu_fallback(make_fake_tensorrt, read_plan, onnx_files, tmp_path):
    trt = make_fake_tensorrt("10.8.0")
    result = build_engine(onnx_files["decomposed"], BuildSettings(dla_core=1), tmp_path / "e.engine", trt=trt, gpu=H200)
    plan = read_plan(result.path)
    assert plan["device"] == "DLA" and plan["dla_core"] == 1 and plan["flags"] == ["GPU_FALLBACK"]


def test_parser_errors_name_the_nodes(make_fake_tensorrt, onnx_files, tmp_path):
    trt = make_fake_tensorrt("10.8.0")  # no Attention (10.14) nor RotaryEmbedding (10.15) yet
    with pytest.raises(PeExportError, match=r"could not parse fused.onnx: transformer.resblocks.0.attn/rotary.* \(RotaryEmbedding\): No importer.*and \d+ more"):
        build_engine(onnx_files["fused"], BuildSettings(), tmp_path / "e.engine", trt=trt, gpu=H200)
    assert not (tmp_path / "e.engine").exists()
    assert build_engine(onnx_files["fused"], BuildSettings(), tmp_path / "e.engine", trt=make_fake_tensorrt("10.15.1"), gpu=H200)


def test_static_batch_onnx_needs_a_matching_range(make_fake_tensorrt, read_plan, onnx_files, tmp_path):
    trt = make_fake_tensorrt("11.0.0")
    with pytest.raises(UsageError, match="static batch of 2; use --batch 2:2:2"):
        build_engine(onnx_files["static"], BuildSettings(batch_max=8), tmp_path / "e.engine", trt=trt, gpu=H200)
    result = build_engine(onnx_files["static"], BuildSettings(batch_min=2, batch_opt=2, batch_max=2), tmp_path / "e.engine", trt=trt, gpu=H200)
    assert read_plan(result.path)["profile"]["pixel_values"][0] == [2, 3, 512, 512]


def test_engine_reuse_and_rebuild(make_fake_tensorrt, onnx_files, tmp_path):
    trt = make_fake_tensorrt("11.0.0")
    path = tmp_path / "e.engine"
    first = ensure_engine(onnx_files["fused"], BuildSettings(), path, trt, H200)
    stamp = first.path.stat().st_mtime_ns
    assert ensure_engine(onnx_files["fused"], BuildSettings(), path, trt, H200).path.stat().st_mtime_ns == stamp
    builds = sum(c[0] == "build_serialized_network" for c in trt.calls)
    ensure_engine(onnx_files["fused"], BuildSettings(opt_level=1), path, trt, H200)  # other settings: rebuilt
    ensure_engine(onnx_files["fused"], BuildSettings(opt_level=1), path, make_fake_tensorrt("11.1.0"), H200)  # other TensorRT
    assert sum(c[0] == "build_serialized_network" for c in trt.calls) == builds + 1


def test_profile_settings_with_overrides():
    profile = find_profile("pe-lang-l14-datacenter")
    settings = build_settings(profile, "int8", opt_level=5, batch_max=64)
    assert (settings.batch_min, settings.batch_opt, settings.batch_max) == (1, 8, 64)
    assert settings.workspace_gib == 8 and settings.opt_level == 5 and str(settings.timing_cache).endswith("datacenter.cache")
    with pytest.raises(UsageError, match="batch range needs min <= opt <= max, got 16:8:32"):
        build_settings(profile, "int8", batch_min=16)


def test_whole_trt_command_with_the_double(make_fake_tensorrt, fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trt = make_fake_tensorrt("11.0.0")
    result = trt_variant(ModelSource(SPATIAL, fixtures.checkpoint(SPATIAL)), "fp16", trt=trt, gpu=H200, batch_max=4, batch_opt=2)
    assert result.path.name == f"{SPATIAL}.trt11.fp16.engine" and result.path.is_file()
    assert (tmp_path / "artifacts" / SPATIAL / f"{SPATIAL}.trt11.fp16.onnx").is_file()  # made through the earlier stages
    assert result.metadata["options"]["output"] == "tokens"
    again = trt_variant(ModelSource(SPATIAL, fixtures.checkpoint(SPATIAL)), "fp16", trt=trt, gpu=H200, batch_max=4, batch_opt=2)
    assert again.path == result.path and sum(c[0] == "build_serialized_network" for c in trt.calls) == 1


def test_no_tensorrt_means_exit_3_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # make the import fail even where installed
    from pe_export.cli import main

    with pytest.raises(SystemExit) as info:
        main(["trt", "-v", SPATIAL, "--random-init", "--int8"])
    err = capsys.readouterr().err
    assert info.value.code == 3 and "TensorRT is not installed; pip install 'pe-export[tensorrt]'" in err
    assert list(tmp_path.iterdir()) == []


def test_no_gpu_means_exit_3(make_fake_tensorrt, tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU") as info:
        trt_variant(ModelSource(SPATIAL, random_init=True), "fp16", trt=make_fake_tensorrt("11.0.0"))
    assert info.value.exit_code == 3


def test_engines_from_elsewhere_are_refused_unless_portable():
    meta = {"tensorrt": "10.8.0", "gpu": {"name": "NVIDIA A100", "compute_capability": "8.0"}, "settings": {}}
    with pytest.raises(TensorRTUnavailable, match="built with TensorRT 10.8.0, this is 11.0.0"):
        check_compatible(meta, "11.0.0", H200)
    with pytest.raises(TensorRTUnavailable, match=r"built for NVIDIA A100 \(sm 8.0\), this GPU is NVIDIA H200 \(sm 9.0\)"):
        check_compatible(meta, "10.8.0", H200)
    check_compatible({**meta, "settings": {"version_compatible": True, "hardware_compat": "ampere+"}}, "11.0.0", H200)


def test_bad_trt_options(capsys):
    from pe_export.cli import main

    with pytest.raises(SystemExit) as info:
        main(["trt", "-v", SPATIAL, "--random-init", "--int8", "--fp8"])
    assert info.value.code == 2 and "choose one precision, not --int8 and --fp8" in capsys.readouterr().err


# ---- real hardware ----------------------------------------------------------------------------

def _hardware() -> str | None:
    if importlib.util.find_spec("tensorrt") is None:
        return "TensorRT is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU"
    return None


@pytest.mark.trt
@pytest.mark.skipif(_hardware() is not None, reason=f"needs TensorRT and an NVIDIA GPU: {_hardware()}")
@pytest.mark.parametrize("precision, min_cosine", [("fp32", 0.9999), ("fp16", 0.999), ("bf16", 0.99), ("int8", 0.99), ("fp8", 0.99)])
def test_real_engine_matches_torch(fixtures, tmp_path, monkeypatch, precision, min_cosine):
    from pe_export.runners.tensorrt import TrtRunner

    monkeypatch.chdir(tmp_path)
    result = trt_variant(ModelSource(SPATIAL, fixtures.checkpoint(SPATIAL)), precision, batch_max=2)
    data = fixtures.outputs(SPATIAL)
    with TrtRunner(result.path) as runner:
        out = runner.run(data["input"])
    assert compare(data["forward"], out).cosine_mean >= min_cosine
