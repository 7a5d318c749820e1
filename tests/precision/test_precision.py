"""Precision variants on the T16 fixture: profiles, calibration data, each precision, reuse and refusal."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from PIL import Image

from pe_export import artifacts
from pe_export.artifacts import Digests
from pe_export.errors import PeExportError, UsageError
from pe_export.manifests import read_manifest
from pe_export.model import ModelSource, load_model
from pe_export.model.preprocess import preprocess_batch
from pe_export.pipeline import Plan
from pe_export.pipeline.commands import quantize_variant
from pe_export.precision import quantize
from pe_export.precision.calibration import load_calibration
from pe_export.precision.profiles import find_profile, load_profile, profile_files
from pe_export.runners.onnxruntime import OrtRunner
from pe_export.validate import compare

SPATIAL = "PE-Spatial-T16-512"


def make_precision(loaded, precision, profile, calibration, output=None):
    """The precision variant made anew from the profile's fp32 ONNX (made or reused)."""
    plan = Plan.of(loaded, profile)
    return quantize.make_precision(plan.fp32(), loaded, precision, profile, calibration, output, digests=plan.digests)


def _profile(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---- profiles ------------------------------------------------------------------------------------

def test_shipped_profiles_are_valid_and_found_by_name():
    names = {load_profile(p).name for p in profile_files()}
    assert names >= {"pe-lang-l14-datacenter", "pe-lang-g14-datacenter", "pe-core-l14-336-datacenter",
                     "pe-lang-l14-jetson-orin", "pe-lang-l14-cpu-edge"}
    for size, last in (("1b", 22), ("3b", 22), ("8b", 46)):  # PLM: every tile count of one image, 32 frames
        plm = find_profile(f"pe-plm-{size}-datacenter")
        assert plm.variant == f"PLM-{size.upper()}" and (plm.batch.min, plm.batch.max) == (1, 37)
        assert rf"^transformer\.resblocks\.{last}\." in plm.quantization.int8.exclude
    jetson = find_profile("pe-lang-l14-jetson-orin")
    assert (jetson.export.target, jetson.export.opset, jetson.batch.max) == ("jetson", 17, 1)
    assert "fp8" not in jetson.precisions and find_profile("pe-lang-l14-cpu-edge").tensorrt is None
    edge = find_profile("pe-lang-l14-cpu-edge")
    assert (edge.deployed_precision("openvino"), edge.deployed_precision("onnxruntime")) == ("int8", None)
    assert edge.threshold("int8") == 0.999 and jetson.deploy is None
    for path in profile_files():  # each says how calibration is meant to be done
        text = path.read_text()
        assert "--calib <folder or glob>" in text and "--calib synthetic" in text and "--random-init" in text, path


@pytest.mark.parametrize(
    "text, message",
    [
        ("name: x\nvariant: L14\nexport:\n  target: trt11\n   opset: 17\n", r"p.yaml:5: malformed YAML: mapping values"),
        ("name: x\nvariant: L14\ncalibration:\n  samples: 4\n  sample_count: 3\n", r"p.yaml:5: field 'calibration.sample_count': unknown field"),
        ("name: x\nvariant: L14\ncalibration:\n  samples: many\n", r"p.yaml:4: field 'calibration.samples': Input should be a valid integer"),
        ("name: x\nvariant: L41\n", r"p.yaml:2: field 'variant': unknown variant 'L41'"),
        ("name: x\nvariant: L14\nexport:\n  target: trt9\n", r"p.yaml:4: field 'export.target': unknown target 'trt9'"),
        ("name: x\nvariant: L14\nbatch: {min: 4, opt: 2, max: 8}\n", r"p.yaml:3: field 'batch': batch range needs min <= opt <= max, got 4:2:8"),
        ("name: x\nvariant: L14\nprecisions: [fp32, int4]\n", r"p.yaml:3: field 'precisions.1'"),
        ("- just\n- a list\n", r"a profile is a YAML mapping"),
        ("name: x\nvariant: L14\nprecisions: [fp32]\ndeploy: {runtime: openvino, precision: int8}\n",
         r"p.yaml:4: field 'deploy': int8 is not one of the profile's precisions \(fp32\)"),
    ],
)
def test_profile_errors_name_file_line_and_field(tmp_path, text, message):
    with pytest.raises(UsageError, match=message):
        load_profile(_profile(tmp_path, text))


def test_unknown_profile_name_lists_the_known_ones():
    with pytest.raises(UsageError, match="no profile named 'nope'; known profiles: .*pe-lang-l14-datacenter"):
        find_profile("nope")


# ---- calibration data -----------------------------------------------------------------------------

@pytest.fixture()
def image_folder(tmp_path):
    folder = tmp_path / "calib"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(folder / ("sub" if i else ".") / f"img{i}.png")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    (folder / "readme.txt").write_text("ignored: not an image")
    return folder


def test_calibration_folder_counts_unreadable_images(image_folder):
    calib = load_calibration(str(image_folder), 3, 32)
    assert calib.batch.shape == (3, 3, 32, 32) and calib.batch.dtype == np.float32
    assert len(calib.files) == 3 and calib.skipped == [str(image_folder / "broken.jpg")]
    assert calib.describe()["skipped"] == 1 and len(calib.sha256) == 64


def test_calibration_images_are_preprocessed_as_at_inference(image_folder):
    calib = load_calibration(str(image_folder), 3, 32)
    np.testing.assert_array_equal(calib.batch, preprocess_batch(calib.files, 32).numpy())
    assert calib.bytes == sum(Path(f).stat().st_size for f in calib.files)  # what its sha256 covers


def test_too_few_images_is_an_error_unless_allowed(image_folder):
    with pytest.raises(UsageError, match=r"only 3 usable images .* for 4 samples \(1 unreadable\)"):
        load_calibration(str(image_folder), 4, 32)
    assert len(load_calibration(str(image_folder), 4, 32, allow_fewer=True).batch) == 3


def test_calibration_glob_and_bad_sources(image_folder, tmp_path):
    assert len(load_calibration(f"{image_folder}/**/*.png", 3, 16).batch) == 3
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        load_calibration(str(tmp_path / "empty"), 2, 16)
    with pytest.raises(UsageError, match="neither a folder, a glob nor 'synthetic'"):
        load_calibration(str(tmp_path / "missing"), 2, 16)


def test_synthetic_calibration_is_seeded():
    a, b = load_calibration("synthetic", 2, 16, seed=1), load_calibration("synthetic", 2, 16, seed=1)
    assert np.array_equal(a.batch, b.batch) and a.sha256 == b.sha256
    assert not np.array_equal(a.batch, load_calibration("synthetic", 2, 16, seed=2).batch)


# ---- precision artifacts ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def spatial(fixtures):
    return load_model(SPATIAL, fixtures.checkpoint(SPATIAL))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("precision")


@pytest.fixture(scope="module")
def profile(workdir):
    return load_profile(_profile(workdir, f"""
name: t16-test
variant: {SPATIAL}
calibration: {{source: synthetic, samples: 8, batch_size: 4, provider: cuda}}
quantization:
  int8: {{exclude: ['^conv1/']}}
"""))


@pytest.fixture(scope="module")
def made(spatial, profile, workdir, tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)  # artifacts/ lands in the module's scratch folder
        results = {}
        for precision in ("fp16", "bf16", "int8", "fp8"):
            calib = load_calibration("synthetic", 8, 512) if precision in ("int8", "fp8") else None
            results[precision] = make_precision(spatial, precision, profile, calib)
        yield results


def _ops(path):
    return [n for n in onnx.load(str(path), load_external_data=False).graph.node]


def test_fp16_keeps_layernorm_softmax_and_rope_in_fp32(made):
    result = made["fp16"]
    model = onnx.load(str(result.path))
    assert result.manifest.qdq_nodes == {"QuantizeLinear": 0, "DequantizeLinear": 0}
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # fp32 I/O
    fp16_weights = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    assert len(fp16_weights) >= 48  # every block's MatMul weights
    rope = [i for i in model.graph.initializer if "rope" in i.name]
    assert rope and all(i.data_type == onnx.TensorProto.FLOAT for i in rope)
    assert result.parity.passed and result.parity.cosine_mean >= 0.999


def test_bf16_is_made_but_not_scored_on_cpu(made):
    row = made["bf16"].parity
    assert made["bf16"].path.is_file() and row.passed is None and row.cosine_mean is None
    assert row.note == "bf16 cannot run on onnxruntime CPU"


@pytest.mark.parametrize("precision, zero_point_type, conv_excluded", [
    ("int8", onnx.TensorProto.INT8, True), ("fp8", onnx.TensorProto.FLOAT8E4M3FN, False)])
def test_int8_and_fp8_have_qdq_where_expected(made, precision, zero_point_type, conv_excluded):
    result = made[precision]
    nodes = _ops(result.path)
    quants = [n for n in nodes if n.op_type == "QuantizeLinear"]
    assert result.manifest.qdq_nodes["QuantizeLinear"] == len(quants) > 0
    model = onnx.load(str(result.path))
    inits = {i.name: i for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in quants if len(n.input) > 2 and n.input[2] in inits]
    assert zero_points and all(z.data_type == zero_point_type for z in zero_points)
    # both inputs of every MatMul of the blocks come through a DequantizeLinear, the weight's per
    # channel; the patch embedding only where the profile does not exclude it (int8 does)
    producers = {out: n for n in nodes for out in n.output}
    matmuls = [n for n in nodes if n.op_type == "MatMul" and n.name.startswith("transformer.")]
    assert len(matmuls) == 4 * 12
    assert all(producers[n.input[i]].op_type == "DequantizeLinear" for n in matmuls for i in (0, 1))
    assert all(any(a.name == "axis" and a.i == 1 for a in producers[n.input[1]].attribute) for n in matmuls)
    conv = next(n for n in nodes if n.op_type == "Conv")
    assert (conv.input[0] not in producers) == conv_excluded
    assert result.parity.passed and result.parity.cosine_mean >= 0.99
    assert result.manifest.calibration["count"] == 8
    assert result.manifest.method == {"int8": "entropy", "fp8": "max"}[precision]
    # the profile asks for CUDA; without onnxruntime's CUDA provider calibration runs on CPU
    has_cuda = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    assert result.manifest.calibration_provider == ("cuda" if has_cuda else "cpu")


def test_calibration_provider_falls_back_to_cpu(monkeypatch):
    from pe_export.precision.calibrate import calibration_provider

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert (calibration_provider("cuda"), calibration_provider("cpu")) == ("cuda", "cpu")
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert calibration_provider("cuda") == "cpu"


def test_precision_artifact_matches_the_fixture(fixtures, made):
    data = fixtures.outputs(SPATIAL)
    out = OrtRunner(made["int8"].path).run(data["input"])
    assert compare(data["forward"], out).cosine_mean >= 0.99


def test_int8_calibrated_on_one_source_is_remade_for_another(spatial, profile, made, image_folder):
    steps: list[str] = []
    photos = profile.with_calibration(str(image_folder), 3)
    result = Plan.of(spatial, photos, steps.append).precision("int8")
    assert any(s.startswith(f"making {made['int8'].path} again: calibration.source, calibration.samples, "
                            "calibration_images changed") for s in steps)
    assert result.manifest.calibration["source"] == str(image_folder) and result.manifest.calibration["count"] == 3
    before = result.path.stat().st_mtime_ns
    steps.clear()
    Plan.of(spatial, photos, steps.append).precision("int8")
    assert f"reused {result.path} (same key)" in steps and result.path.stat().st_mtime_ns == before


PRECISION_KEY = ["precision", "source_onnx", "calibration.source", "calibration.samples", "calibration.batch_size",
                 "calibration.seed", "calibration.method", "calibration.allow_fewer", "calibration.provider",
                 "calibration_images", "quantization.op_types", "quantization.exclude",
                 "quantization.quantize_attention", "quantization.smoothing", "quantization.auto_exclude", "threshold"]
EXPORT_KEY = ["kind", "variant", "weights.sha256", "weights.seed", "options.target", "options.opset", "options.rope",
              "options.attention", "options.batch", "options.output", "options.layer", "options.strip_cls",
              "options.simplify", "options.parity_threshold.min_cosine", "options.parity_threshold.max_abs"]


def _flipped(key: dict, field: str) -> dict:
    key = json.loads(json.dumps(key))
    *parents, leaf = field.split(".")
    node = key
    for name in parents:
        node = node[name]
    node[leaf] = ["changed", node[leaf]]
    return key


@pytest.mark.parametrize("artifact, field", [("fp8", f) for f in PRECISION_KEY] + [("fp32", f) for f in EXPORT_KEY])
def test_every_key_field_decides_reuse(made, artifact, field):
    manifest = made["fp8"].manifest
    path = Path(manifest.source_onnx.path) if artifact == "fp32" else made["fp8"].path
    key = read_manifest(path).key
    assert sorted(artifacts.flat_key(key)) == sorted(EXPORT_KEY if artifact == "fp32" else PRECISION_KEY)
    assert artifacts.reusable(path, key, Digests())[1] == "same key"
    assert artifacts.reusable(path, _flipped(key, field), Digests()) == (None, f"{field} changed")


def test_matching_fp32_onnx_is_reused_and_a_stale_one_refused(spatial, profile, made):
    fp32 = Plan.of(spatial, profile).fp32()
    before = fp32.path.stat().st_mtime_ns
    again = Plan.of(spatial, profile).fp32()
    assert again.path == fp32.path and fp32.path.stat().st_mtime_ns == before
    data = bytearray(fp32.path.read_bytes())
    data[-10] ^= 0xFF
    fp32.path.write_bytes(bytes(data))
    with pytest.raises(UsageError, match="no longer matches its manifest"):
        make_precision(spatial, "fp16", profile, None)


def test_threshold_miss_is_not_left_under_its_name(spatial, workdir, tmp_path):
    strict = load_profile(_profile(tmp_path, f"""
name: strict
variant: {SPATIAL}
export: {{target: jetson}}
calibration: {{samples: 4}}
parity: {{int8: 0.9999999}}
"""))
    path = tmp_path / "out" / "m.int8.onnx"
    with pytest.raises(PeExportError, match=r"int8 misses its parity threshold: token cosine mean 0\.9\d+ < 0\.9999999"):
        make_precision(spatial, "int8", strict, load_calibration("synthetic", 4, 512), path)
    assert not path.exists()
    assert (tmp_path / "out" / "m.int8.onnx.rejected" / "m.int8.onnx").is_file()


def test_request_errors_come_before_loading(forbid_loading, tmp_path):
    forbid_loading("loaded weights before checking the request")
    with pytest.raises(UsageError, match="cannot run fp8"):
        quantize_variant(ModelSource("L14", random_init=True), "fp8", profile="pe-lang-l14-cpu-edge")
    with pytest.raises(UsageError, match="is for PE-Lang-L14-448, not PE-Spatial-T16-512"):
        quantize_variant(ModelSource(SPATIAL, random_init=True), "int8", profile="pe-lang-l14-datacenter")
    with pytest.raises(UsageError, match="unknown precision 'int4'"):
        quantize_variant(ModelSource(SPATIAL, random_init=True), "int4")
    old = _profile(tmp_path, f"name: old\nvariant: {SPATIAL}\nexport: {{target: trt10}}\n")
    with pytest.raises(UsageError, match="fp8 needs opset 19 or higher .* exports opset 17 for trt10"):
        quantize_variant(ModelSource(SPATIAL, random_init=True), "fp8", profile=str(old))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="no images"):
        quantize_variant(ModelSource(SPATIAL, random_init=True), "int8", calib=str(tmp_path / "empty"))


def test_real_weights_refuse_synthetic_calibration_unless_asked(monkeypatch, forbid_loading, fixtures, tmp_path):
    from pe_export.pipeline.commands import sensitivity_variant

    monkeypatch.chdir(tmp_path)  # no artifacts of earlier tests to reuse: the weights must load
    forbid_loading("loaded weights before checking the request")
    real = ModelSource(SPATIAL, fixtures.checkpoint(SPATIAL))
    own = _profile(tmp_path, f"name: own\nvariant: {SPATIAL}\ncalibration: {{source: synthetic, samples: 8}}\n")
    for profile, samples in ((None, 32), (str(own), 8)):
        with pytest.raises(UsageError, match=rf"int8 of real weights needs real calibration images: give --calib a "
                                             rf"folder or glob of {samples} or more .* or --calib synthetic"):
            quantize_variant(real, "int8", profile=profile)
    with pytest.raises(UsageError, match="fp8 of real weights needs real calibration images"):
        sensitivity_variant(real, "fp8")

    class Loading(Exception):
        pass

    def reached(*args, **kwargs):
        raise Loading
    monkeypatch.setattr("pe_export.model.factory.load_model", reached)  # past the request checks
    for source, calib in ((real, "synthetic"), (ModelSource(SPATIAL, random_init=True), None)):
        with pytest.raises(Loading):
            quantize_variant(source, "int8", calib=calib, samples=2)
    with pytest.raises(Loading):
        quantize_variant(real, "fp16")  # nothing to calibrate


def test_qdq_layout_and_scales_match_modelopt(spatial, profile, tmp_path):
    """The reference producer for TensorRT, on the same graph and data: same sites, axes and scales."""
    quantization = pytest.importorskip("modelopt.onnx.quantization", reason="the quant extra is not installed")
    from pe_export.precision import qdq
    from pe_export.precision.calibrate import activation_ranges
    from pe_export.onnx.export import export_onnx
    from pe_export.precision.spec import export_options

    fp32 = export_onnx(spatial, export_options(profile), tmp_path / "fp32.onnx").path
    section = profile.quantization.int8
    data = load_calibration("synthetic", 4, 512).batch
    reference = tmp_path / "modelopt.onnx"
    quantization.quantize(
        onnx_path=str(fp32), quantize_mode="int8", calibration_data={"pixel_values": data}, calibration_method="max",
        calibration_eps=["cpu"], op_types_to_quantize=list(section.op_types), nodes_to_exclude=list(section.exclude),
        disable_mha_qdq=True, high_precision_dtype="fp32", output_path=str(reference), log_level="ERROR",
    )
    ours = onnx.load(str(fp32))
    sites = qdq.plan(ours.graph, section)
    ranges = activation_ranges(fp32, data, 2, "max", qdq.activations(sites), "pixel_values", tmp_path)
    qdq.insert_qdq(ours, sites, ranges.amax, "int8")
    mine, theirs = _qdq_sites(ours), _qdq_sites(onnx.load(str(reference)))
    assert mine.keys() == theirs.keys() and len(mine) == 2 * 4 * 12
    for site, (axis, scale) in mine.items():
        assert axis == theirs[site][0], site
        np.testing.assert_allclose(scale, theirs[site][1], rtol=1e-5, err_msg=str(site))


def _qdq_sites(model):
    """{(GEMM/conv node, input index): (DQ axis, DQ scale)} for every input read through a DequantizeLinear."""
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    producers = {out: n for n in model.graph.node for out in n.output}
    sites = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        for index, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is not None and dq.op_type == "DequantizeLinear":
                axis = next((a.i for a in dq.attribute if a.name == "axis"), None)
                sites[(node.name, index)] = (axis if inits[dq.input[1]].ndim else None, inits[dq.input[1]])
    return sites


def test_exported_graphs_run_without_onnxruntime_warnings(made, t16_exports, tmp_path, capfd, monkeypatch):
    """Every T16 graph (fp32 of each target, Core's pooled head, each precision) at changing batch
    sizes: onnxruntime, asked to report warnings, has none (no bogus shape annotations)."""
    paths = [made[p].path.resolve() for p in ("fp16", "int8", "fp8")]
    monkeypatch.chdir(tmp_path)
    core_profile = load_profile(_profile(tmp_path, "name: core\nvariant: PE-Core-T16-384\nexport: {target: ort}\n"))
    paths += [t16_exports("PE-Core-T16-384", target="trt11", simplify=True).path,
              t16_exports(SPATIAL, target="jetson").path]
    paths.append(make_precision(t16_exports.loaded("PE-Core-T16-384"), "fp16", core_profile, None).path)
    capfd.readouterr()
    for path in paths:
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 2  # warnings and worse
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        size = 384 if "Core" in path.name else 512
        for batch in (4, 1, 3):
            session.run(None, {"pixel_values": np.zeros((batch, 3, size, size), np.float32)})
    warnings = [line for line in capfd.readouterr().err.splitlines() if "[W:onnxruntime" in line]
    assert warnings == []
