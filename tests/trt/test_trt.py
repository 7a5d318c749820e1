"""TensorRT engine builds against API-faithful doubles of 10.x and 11.x (tests/trt/conftest.py), with the
failures real TensorRT reports; real builds where TensorRT and a GPU exist (marked `trt`)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import onnx
import pytest

from pe_export.errors import PeExportError, TensorRTUnavailable, UsageError
from pe_export.manifests import EngineManifest, read_manifest
from pe_export.model import ModelSource
from pe_export.onnx.spec import ExportResult
from pe_export.pipeline.commands import trt_variant
from pe_export.precision.profiles import find_profile, load_profile
from pe_export.runners.tensorrt import check_compatible
from pe_export.runners.tensorrt_env import Gpu, import_tensorrt
from pe_export.trt.build import BuildSettings, build_engine
from pe_export.trt.engine import build_settings, covering_settings, ensure_engine
from pe_export.trt.timing_cache import cache_file
from pe_export.validate import compare

SPATIAL = "PE-Spatial-T16-512"
H200 = Gpu("NVIDIA H200", (9, 0))
A100 = Gpu("NVIDIA A100-SXM4-80GB", (8, 0))


def _builds(trt) -> int:
    return sum(c[0] == "build_serialized_network" for c in trt.calls)


# ---- building --------------------------------------------------------------------------------

def test_the_11x_double_has_no_precision_flags(make_fake_tensorrt):
    trt = make_fake_tensorrt("11.0.0")
    for name in ("FP16", "BF16", "INT8", "FP8"):
        with pytest.raises(AttributeError):
            getattr(trt.BuilderFlag, name)
    with pytest.raises(AttributeError):
        trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH
    assert not hasattr(trt.Builder(trt.Logger()).create_builder_config(), "int8_calibrator")


def test_11x_build_maps_every_option(use_tensorrt, read_plan, onnx_files, tmp_path):
    trt = use_tensorrt("11.0.0")
    base = tmp_path / "cache" / "tc.cache"
    settings = BuildSettings(precision="int8", batch_min=1, batch_opt=4, batch_max=16, workspace_gib=2, opt_level=5,
                             timing_cache=base, hardware_compat="ampere+", version_compatible=True)
    result = build_engine(onnx_files["fused"], settings, tmp_path / "e.engine", gpu=H200)
    assert ("create_network", 0) in trt.calls  # strongly typed is the only mode on 11.x
    assert ("parse_from_file", str(onnx_files["fused"].path)) in trt.calls  # from the file: external data is found
    plan = read_plan(result.path)
    assert plan["strongly_typed"] and plan["flags"] == ["TF32", "VERSION_COMPATIBLE"]  # precision lives in the graph
    assert plan["profile"] == {"pixel_values": [[1, 3, 512, 512], [4, 3, 512, 512], [16, 3, 512, 512]]}
    assert plan["workspace"] == 2 * 2**30 and plan["opt_level"] == 5 and plan["hardware_compat"] == "AMPERE_PLUS"
    meta = json.loads((tmp_path / "e.engine.json").read_text())
    assert meta["tensorrt"] == "11.0.0" and meta["gpu"] == {"name": "NVIDIA H200", "compute_capability": "9.0"}
    assert meta["precision"] == "int8" and meta["engine_bytes"] == result.path.stat().st_size
    assert meta["inputs"] == [{"name": "pixel_values", "shape": [-1, 3, 512, 512], "dtype": "FLOAT"}]
    assert meta["outputs"][0]["shape"] == [-1, 1025, 192]
    assert meta["source_onnx"] == {"path": str(onnx_files["fused"].path), "identity": onnx_files["fused"].manifest.identity}
    assert meta["settings"]["timing_cache"] == str(base) and meta["build_seconds"] >= 0
    keyed = tmp_path / "cache" / "tc.trt11.0.0.nvidia-h200-sm90.cache"
    assert meta["timing_cache"] == str(keyed) and not base.exists()
    assert json.loads(keyed.read_bytes()) == {"tensorrt": "11.0.0", "gpu": "9.0", "entries": 1} and result.notes == ()


def test_10x_build_creates_a_strongly_typed_network(use_tensorrt, read_plan, onnx_files, tmp_path):
    trt = use_tensorrt("10.8.0")
    result = build_engine(onnx_files["decomposed"], BuildSettings(precision="fp16"), tmp_path / "e.engine", gpu=H200)
    strongly = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert ("create_network", strongly) in trt.calls
    plan = read_plan(result.path)
    assert plan["strongly_typed"] and plan["flags"] == ["TF32"]  # BuilderFlag.FP16 exists on 10.x, and is never set


@pytest.mark.parametrize("precision, tf32, flags", [("fp32", False, []), ("fp32", True, ["TF32"]), ("fp16", False, ["TF32"])])
def test_fp32_engines_compute_without_tf32_unless_asked(use_tensorrt, read_plan, onnx_files, tmp_path, precision, tf32, flags):
    use_tensorrt("11.0.0")
    result = build_engine(onnx_files["fused"], BuildSettings(precision=precision, tf32=tf32), tmp_path / "e.engine", gpu=H200)
    assert read_plan(result.path)["flags"] == flags


def test_dla_with_gpu_fallback_where_there_is_one(use_tensorrt, read_plan, onnx_files, tmp_path):
    use_tensorrt("10.3.0", dla_cores=2)  # Jetson Orin, JetPack 6
    result = build_engine(onnx_files["decomposed"], BuildSettings(dla_core=1), tmp_path / "e.engine", gpu=H200)
    plan = read_plan(result.path)
    assert plan["device"] == "DLA" and plan["dla_core"] == 1 and plan["flags"] == ["GPU_FALLBACK", "TF32"]
    use_tensorrt("11.4.1", dla_cores=2)  # DLA is back on Orin with JetPack 7.2.2+
    assert build_engine(onnx_files["decomposed"], BuildSettings(dla_core=0), tmp_path / "e.engine", gpu=H200)


@pytest.mark.parametrize("version, cores, error, message", [
    ("11.0.0", 0, TensorRTUnavailable, "--dla-core 0: this device has no DLA under TensorRT 11.0.0"),  # discrete GPU
    ("10.8.0", 2, TensorRTUnavailable, "no DLA under TensorRT 10.8.0"),  # Orin, but 10.7 was the last 10.x with DLA
    ("11.4.0", 2, TensorRTUnavailable, "no DLA under TensorRT 11.4.0"),
    ("10.3.0", 2, UsageError, "--dla-core 2: this device has 2 DLA core.s., numbered 0 to 1"),
])
def test_dla_core_the_device_lacks_is_refused(use_tensorrt, onnx_files, tmp_path, version, cores, error, message):
    use_tensorrt(version, dla_cores=cores)
    core = 2 if error is UsageError else 0
    with pytest.raises(error, match=message):
        build_engine(onnx_files["decomposed"], BuildSettings(dla_core=core), tmp_path / "e.engine", gpu=H200)
    assert not (tmp_path / "e.engine").exists()


def test_dla_is_checked_before_any_work(use_tensorrt, gpu_machine, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    use_tensorrt("11.0.0")
    from pe_export.cli import main

    with pytest.raises(SystemExit) as info:
        main(["trt", "-v", SPATIAL, "--random-init", "--fp32", "--dla-core", "0"])
    assert info.value.code == 3 and "this device has no DLA" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_parser_errors_name_the_nodes(use_tensorrt, onnx_files, tmp_path):
    use_tensorrt("10.8.0")  # no Attention (10.14) nor RotaryEmbedding (10.15) yet
    fused = re.escape(onnx_files["fused"].path.name)
    with pytest.raises(PeExportError, match=rf"could not parse {fused}: transformer.resblocks.0.attn/rotary.* \(RotaryEmbedding\): No importer.*and \d+ more"):
        build_engine(onnx_files["fused"], BuildSettings(), tmp_path / "e.engine", gpu=H200)
    assert not (tmp_path / "e.engine").exists()
    use_tensorrt("10.15.1")
    assert build_engine(onnx_files["fused"], BuildSettings(), tmp_path / "e.engine", gpu=H200)


def test_parser_reads_external_data(use_tensorrt, onnx_files, tmp_path):
    use_tensorrt("11.0.0")
    split = tmp_path / "split.onnx"
    onnx.save(onnx.load(onnx_files["fused"].path), split, save_as_external_data=True, location="split.onnx.data",
              size_threshold=0)
    resaved = ExportResult(split, onnx_files["fused"].manifest)  # the same graph, its weights beside it
    assert build_engine(resaved, BuildSettings(), tmp_path / "e.engine", gpu=H200).path.is_file()
    (tmp_path / "split.onnx.data").unlink()
    with pytest.raises(PeExportError, match="could not parse split.onnx: node -1 \\(\\): failed to load the weights"):
        build_engine(resaved, BuildSettings(), tmp_path / "f.engine", gpu=H200)
    assert not (tmp_path / "f.engine").exists()


def test_static_batch_onnx_needs_a_matching_range(use_tensorrt, read_plan, onnx_files, tmp_path):
    use_tensorrt("11.0.0")
    with pytest.raises(UsageError, match="static batch of 2; use --batch 2:2:2"):
        build_engine(onnx_files["static"], BuildSettings(batch_max=8), tmp_path / "e.engine", gpu=H200)
    result = build_engine(onnx_files["static"], BuildSettings(batch_min=2, batch_opt=2, batch_max=2), tmp_path / "e.engine", gpu=H200)
    assert read_plan(result.path)["profile"]["pixel_values"][0] == [2, 3, 512, 512]


# ---- timing cache ------------------------------------------------------------------------------

def test_timing_cache_per_tensorrt_release_and_gpu(use_tensorrt, onnx_files, tmp_path):
    base = tmp_path / "tc.cache"
    settings = BuildSettings(timing_cache=base)
    for version in ("11.0.0", "11.1.0", "11.0.0"):
        use_tensorrt(version)
        assert build_engine(onnx_files["fused"], settings, tmp_path / "e.engine", gpu=H200).notes == ()
    own = {v: json.loads(cache_file(base, v, H200).read_bytes()) for v in ("11.0.0", "11.1.0")}
    assert own == {"11.0.0": {"tensorrt": "11.0.0", "gpu": "9.0", "entries": 2},  # loaded again and grown
                   "11.1.0": {"tensorrt": "11.1.0", "gpu": "9.0", "entries": 1}}


@pytest.mark.parametrize("stored, note", [
    (json.dumps({"tensorrt": "11.0.0", "gpu": "8.0", "entries": 9}).encode(), "TensorRT refused the timing cache"),
    (b"\x00garbage", "TensorRT refused the timing cache"),
])
def test_a_cache_tensorrt_refuses_is_replaced(use_tensorrt, onnx_files, tmp_path, stored, note):
    use_tensorrt("11.0.0")
    keyed = cache_file(tmp_path / "tc.cache", "11.0.0", H200)
    keyed.write_bytes(stored)  # e.g. copied from an A100 machine under this machine's name
    result = build_engine(onnx_files["fused"], BuildSettings(timing_cache=tmp_path / "tc.cache"), tmp_path / "e.engine", gpu=H200)
    assert result.path.is_file() and len(result.notes) == 1 and note in result.notes[0]
    assert json.loads(keyed.read_bytes()) == {"tensorrt": "11.0.0", "gpu": "9.0", "entries": 1}


def test_a_cache_problem_after_the_build_keeps_the_engine(use_tensorrt, onnx_files, tmp_path, monkeypatch):
    trt = use_tensorrt("11.0.0")
    config_type = type(trt.Builder(trt.Logger()).create_builder_config())
    monkeypatch.setattr(config_type, "get_timing_cache", lambda self: None)
    result = build_engine(onnx_files["fused"], BuildSettings(timing_cache=tmp_path / "tc.cache"), tmp_path / "e.engine", gpu=H200)
    assert result.path.is_file() and json.loads((tmp_path / "e.engine.json").read_text())["engine_bytes"] > 0
    assert result.notes == (f"TensorRT returned no timing cache after the build; {cache_file(tmp_path / 'tc.cache', '11.0.0', H200)} "
                            "was not updated",)
    monkeypatch.undo()
    use_tensorrt("11.0.0")
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    result = build_engine(onnx_files["fused"], BuildSettings(timing_cache=tmp_path / "blocked" / "tc.cache"), tmp_path / "f.engine", gpu=H200)
    assert result.path.is_file() and "could not save the timing cache" in result.notes[0]


# ---- reuse and the version rule -----------------------------------------------------------------

def test_engine_reuse_and_rebuild(use_tensorrt, read_plan, onnx_files, tmp_path):
    trt = use_tensorrt("11.0.0")
    path = tmp_path / "e.engine"
    first = ensure_engine(onnx_files["fused"], BuildSettings(), path, H200)
    stamp = first.path.stat().st_mtime_ns
    assert ensure_engine(onnx_files["fused"], BuildSettings(), path, H200).path.stat().st_mtime_ns == stamp
    ensure_engine(onnx_files["fused"], BuildSettings(opt_level=1), path, H200)  # other settings: rebuilt
    assert _builds(trt) == 2
    newer = use_tensorrt("11.1.0")  # a plain engine runs only on the release that built it
    ensure_engine(onnx_files["fused"], BuildSettings(opt_level=1), path, H200)
    assert _builds(newer) == 1 and read_plan(path)["version"] == "11.1.0"
    ensure_engine(onnx_files["fused"], BuildSettings(opt_level=1), path, A100)  # another GPU: rebuilt
    assert _builds(newer) == 2


def test_version_compatible_engines_are_reused_forward_only(use_tensorrt, read_plan, onnx_files, tmp_path):
    settings = BuildSettings(version_compatible=True)
    use_tensorrt("11.0.0")
    ensure_engine(onnx_files["fused"], settings, tmp_path / "e.engine", H200)
    newer = use_tensorrt("11.1.0")
    ensure_engine(onnx_files["fused"], settings, tmp_path / "e.engine", H200)
    assert _builds(newer) == 0 and read_plan(tmp_path / "e.engine")["version"] == "11.0.0"  # 11.1 runs it
    ensure_engine(onnx_files["fused"], settings, tmp_path / "n.engine", H200)
    older = use_tensorrt("11.0.0")
    ensure_engine(onnx_files["fused"], settings, tmp_path / "n.engine", H200)
    assert _builds(older) == 1 and read_plan(tmp_path / "n.engine")["version"] == "11.0.0"  # 11.0 cannot run 11.1's


def _engine(fields: dict) -> EngineManifest:
    """An engine manifest holding only what the version rule reads."""
    return EngineManifest.model_construct(**fields)


@pytest.mark.parametrize("built, runtime, portable, runs", [
    ("10.13.0.35", "10.13.0.35", False, True),
    ("10.13.0.35", "10.15.1", False, False),
    ("10.15.1", "10.13.0.35", False, False),
    ("10.13.0.35", "10.15.1", True, True),  # version-compatible: a newer release of the same major
    ("10.15.1", "10.13.0.35", True, False),  # never an older one
    ("10.15.1", "11.0.0", True, True),  # the documented cross-major pair
    ("11.0.0", "10.16.0", True, False),
    ("11.4.0", "12.0.0", True, False),  # no other pair across majors
])
def test_which_tensorrt_runs_an_engine(built, runtime, portable, runs):
    meta = {"tensorrt": built, "gpu": {"name": "NVIDIA H200", "compute_capability": "9.0"},
            "settings": {"version_compatible": portable}}
    if runs:
        check_compatible(_engine(meta), runtime, H200)
    else:
        with pytest.raises(TensorRTUnavailable, match=f"built with TensorRT {built}, this is {runtime}"):
            check_compatible(_engine(meta), runtime, H200)


def test_which_gpu_runs_an_engine():
    meta = {"tensorrt": "11.0.0", "gpu": {"name": "NVIDIA A100", "compute_capability": "8.0"}, "settings": {}}
    with pytest.raises(TensorRTUnavailable, match=r"built for NVIDIA A100 \(sm 8.0\), this GPU is NVIDIA H200 \(sm 9.0\)"):
        check_compatible(_engine(meta), "11.0.0", H200)
    portable = {**meta, "settings": {"hardware_compat": "ampere+"}}
    check_compatible(_engine(portable), "11.0.0", H200)
    with pytest.raises(TensorRTUnavailable, match="built for Ampere or newer GPUs, this GPU is Tesla T4"):
        check_compatible(_engine(portable), "11.0.0", Gpu("Tesla T4", (7, 5)))


# ---- settings and the whole command ----------------------------------------------------------------

def test_profile_settings_with_overrides():
    profile = find_profile("pe-lang-l14-datacenter")
    settings = build_settings(profile, "int8", opt_level=5, batch_max=64)
    assert (settings.batch_min, settings.batch_opt, settings.batch_max) == (1, 8, 64)
    assert settings.workspace_gib == 8 and settings.opt_level == 5 and str(settings.timing_cache).endswith("datacenter.cache")
    with pytest.raises(UsageError, match="batch range needs min <= opt <= max, got 16:8:32"):
        build_settings(profile, "int8", batch_min=16)


def test_covering_settings_keep_the_profile_where_it_covers():
    profile = find_profile("pe-lang-l14-datacenter")  # batches 1:8:32
    assert covering_settings(profile, "fp16", [1, 8]) == build_settings(profile, "fp16")
    wider = covering_settings(profile, "fp16", [4, 64])
    assert (wider.batch_min, wider.batch_opt, wider.batch_max) == (1, 8, 64)
    jetson = covering_settings(find_profile("pe-lang-l14-jetson-orin"), "fp16", [2, 4])  # batch 1:1:1
    assert (jetson.batch_min, jetson.batch_opt, jetson.batch_max) == (1, 1, 4)


def test_whole_trt_command_with_the_double(use_tensorrt, fixtures, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    trt = use_tensorrt("11.0.0")
    source = ModelSource(SPATIAL, fixtures.checkpoint(SPATIAL))
    result = trt_variant(source, "fp32", gpu=H200, batch_max=4, batch_opt=2)
    assert result.path.name == f"{SPATIAL}.trt11.engine" and result.path.is_file()
    assert (tmp_path / "artifacts" / SPATIAL / f"{SPATIAL}.trt11.onnx").is_file()  # made through the earlier stages
    assert result.manifest.options["output"] == "tokens"
    again = trt_variant(source, "fp32", gpu=H200, batch_max=4, batch_opt=2)
    assert again.path == result.path and _builds(trt) == 1


def test_an_engine_is_rebuilt_for_new_weights_upstream(use_tensorrt, tmp_path, monkeypatch):
    """With the weights in external data (as L14's are), another seed's ONNX differs only in its .data
    file: the engine keys on the ONNX's identity, so it is built again, saying why."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("pe_export.onnx.export.EXTERNAL_DATA_BYTES", 0)
    trt = use_tensorrt("11.0.0")
    said: list[str] = []
    first = trt_variant(ModelSource(SPATIAL, random_init=True), "fp32", gpu=H200)
    again = trt_variant(ModelSource(SPATIAL, random_init=True, seed=1), "fp32", gpu=H200, progress=said.append)
    assert again.path == first.path and f"building {again.path} again: onnx changed" in said and _builds(trt) == 2
    assert again.manifest.source_onnx.identity != first.manifest.source_onnx.identity
    assert read_manifest(Path(again.manifest.source_onnx.path)).weights.seed == 1


def test_a_precision_the_gpu_cannot_compute_is_refused_first(use_tensorrt, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    use_tensorrt("11.0.0")
    with pytest.raises(TensorRTUnavailable, match=r"fp8 engines need a GPU of compute capability 8.9 or newer; this is NVIDIA A100-SXM4-80GB \(sm 8.0\)"):
        trt_variant(ModelSource(SPATIAL, random_init=True), "fp8", gpu=A100)
    assert list(tmp_path.iterdir()) == []


def test_no_tensorrt_means_exit_3_and_nothing_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(__import__("sys").modules, "tensorrt", None)  # make the import fail even where installed
    from pe_export.cli import main

    with pytest.raises(SystemExit) as info:
        main(["trt", "-v", SPATIAL, "--random-init", "--int8"])
    err = capsys.readouterr().err
    assert info.value.code == 3 and "TensorRT is not installed; pip install 'pe-export[tensorrt]'" in err
    assert list(tmp_path.iterdir()) == []


def test_tensorrt_older_than_the_supported_range(use_tensorrt):
    use_tensorrt("10.2.0")
    with pytest.raises(TensorRTUnavailable, match="TensorRT 10.2.0 is older than 10.3, the oldest pe-export supports"):
        import_tensorrt()
    use_tensorrt("10.3.0")
    assert import_tensorrt().__version__ == "10.3.0"


def test_no_gpu_means_exit_3(use_tensorrt, monkeypatch):
    import torch

    use_tensorrt("11.0.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(TensorRTUnavailable, match="no CUDA GPU") as info:
        trt_variant(ModelSource(SPATIAL, random_init=True), "fp16")
    assert info.value.exit_code == 3


def test_bad_trt_options(capsys):
    from pe_export.cli import main

    with pytest.raises(SystemExit) as info:
        main(["trt", "-v", SPATIAL, "--random-init", "--int8", "--fp8"])
    assert info.value.code == 2 and "choose one precision, not --int8 and --fp8" in capsys.readouterr().err


def test_profiles_name_the_tensorrt_they_need():
    jetson = load_profile(find_profile("pe-lang-l14-jetson-orin").path)
    assert jetson.export.target == "jetson" and jetson.tensorrt.dla_core is None and jetson.tensorrt.tf32 is False


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
    from pe_export.runners.tensorrt_env import current_gpu
    from pe_export.trt.engine import gpu_cannot_run

    if gpu_cannot_run(precision, current_gpu()):
        pytest.skip(gpu_cannot_run(precision, current_gpu()))
    monkeypatch.chdir(tmp_path)
    result = trt_variant(ModelSource(SPATIAL, fixtures.checkpoint(SPATIAL)), precision, batch_max=2)
    data = fixtures.outputs(SPATIAL)
    with TrtRunner(result.path) as runner:
        out = runner.run(data["input"])
        graphed = TrtRunner(result.path, cuda_graph=True)
        assert compare(out, graphed.run(data["input"])).cosine_min > 0.99999
        graphed.close()
    assert compare(data["forward"], out).cosine_mean >= min_cosine


def test_every_engine_key_field_decides_reuse(use_tensorrt, onnx_files, tmp_path):
    from pe_export import artifacts

    use_tensorrt("11.0.0")
    steps: list[str] = []
    path = ensure_engine(onnx_files["fused"], BuildSettings(), tmp_path / "e.engine", H200).path
    key = read_manifest(path).key
    fields = sorted(artifacts.flat_key(key))
    assert fields == sorted(["onnx", *(f"settings.{name}" for name in BuildSettings().recorded())])
    for field in fields:
        flipped = json.loads(json.dumps(key))
        node, *rest = field.split(".")
        if rest:
            flipped[node][rest[0]] = ["changed"]
        else:
            flipped[node] = "changed"
        assert artifacts.reusable(path, flipped, artifacts.Digests()) == (None, f"{field} changed")
    ensure_engine(onnx_files["fused"], BuildSettings(opt_level=1), path, H200, steps.append)
    assert steps[0] == f"building {path} again: settings.opt_level changed"
    steps.clear()
    ensure_engine(onnx_files["fused"], BuildSettings(opt_level=1), path, A100, steps.append)
    assert steps[0].startswith(f"building {path} again: engine was built for NVIDIA H200")


def test_the_trtllm_layout_is_what_tensorrt_llm_loads(use_tensorrt, read_plan, plm_t16, tmp_path, monkeypatch):
    """`trt --layout trtllm DIR` on a PLM-shaped model: vision/model.engine with the tensor names TensorRT-LLM's
    multimodal runner binds, and the builder_config its multimodal builder writes."""
    monkeypatch.chdir(tmp_path)
    use_tensorrt("11.0.0")
    plm = plm_t16
    layout = tmp_path / "engines" / "plm"
    result = trt_variant(ModelSource(plm, random_init=True), "fp16", gpu=H200, trtllm=layout, batch_opt=13, batch_max=37)
    assert result.path == layout / "vision" / "model.engine"
    recorded = read_plan(result.path)
    assert [t["name"] for t in recorded["inputs"]] == ["input"] and [t["name"] for t in recorded["outputs"]] == ["encoder_output"]
    config = json.loads((layout / "vision" / "config.json").read_text())
    io_dtype = {"FLOAT": "float32", "HALF": "float16"}[result.manifest.inputs[0].dtype]
    assert config["builder_config"] == {
        "model_type": "llava", "model_name": "multiModal", "precision": io_dtype, "strongly_typed": True,
        "max_batch_size": 37, "output_shape": [-1, 256, 64], "tensor_parallel": 1, "int8": False, "use_refit": False,
        "use_strip_plan": False, "force_num_profiles": None}
    ours = config["pe_export"]
    assert ours["precision"] == "fp16" and ours["engine_identity"] == result.manifest.identity
    assert ours["handoff"]["embedding_dim"] == 64 and ours["handoff"]["tokens_per_tile"] == 256
    assert ours["handoff"]["image_token_id"] == 128002 and ours["handoff"]["dtype"] == io_dtype
    assert ours["batch"] == [1, 13, 37]
    # the plain engine of the same ONNX keeps the ONNX's names; the layout's is its own artifact
    plain = trt_variant(ModelSource(plm, random_init=True), "fp16", gpu=H200, batch_opt=13, batch_max=37)
    assert [t.name for t in plain.manifest.outputs] == ["image_features"] and plain.path != result.path
    with pytest.raises(UsageError, match="not pooled ones"):
        trt_variant(ModelSource("PE-Core-T16-384", random_init=True), "fp16", gpu=H200, trtllm=tmp_path / "core")
    assert not (tmp_path / "core").exists()
