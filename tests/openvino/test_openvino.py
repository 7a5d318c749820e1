"""OpenVINO on the T16 fixture: the runner at each inference precision, IR per precision with its
manifest and parity, reuse, refusal, and bf16 only where the CPU has it."""

from __future__ import annotations

from pathlib import Path

import pytest

from pe_export.errors import CheckFailed, PeExportError, Unavailable, UsageError
from pe_export.model import load_model
from pe_export.onnx.export import ExportOptions, export_onnx
from pe_export.manifests import read_manifest
from pe_export.openvino.ir import convert, make_ir, torch_reference
from pe_export.pipeline import Plan
from pe_export.precision.profiles import Profile
from pe_export.report import PrecisionResult
from pe_export.runners import BACKENDS, default_backend, open_runner
from pe_export.runners import openvino as ov_runner
from pe_export.validate import compare

SPATIAL = "PE-Spatial-T16-512"
HAS_BF16 = ov_runner.runs("bf16")


@pytest.fixture(scope="module")
def spatial(fixtures):
    return load_model(SPATIAL, fixtures.checkpoint(SPATIAL))


@pytest.fixture(scope="module")
def profile():
    return Profile(name="t16-cpu", variant=SPATIAL, export={"target": "ort"}, tensorrt=None, parity={"int8": 0.999},
                   calibration={"samples": 4, "batch_size": 4}, quantization={"int8": {"exclude": ["^conv1/"]}})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("openvino")


@pytest.fixture(scope="module")
def made(spatial, profile, workdir):
    """fp32, int8 and (where the CPU has bf16 units) bf16 IR, made under the module's scratch folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        plan = Plan.of(spatial, profile)
        yield {p: plan.ir(p) for p in ("fp32", "int8", "bf16") if ov_runner.runs(p)}


def _bin(result) -> Path:
    return result.path.with_suffix(".bin")


# ---- the runner ----------------------------------------------------------------------------------

def test_openvino_runs_the_onnx_at_the_precision_asked_for(fixtures, spatial, tmp_path):
    """f32 is asked for explicitly (OpenVINO's CPU default is bf16 where the CPU has it): exact to 1e-4."""
    onnx_path = export_onnx(spatial, ExportOptions(target="ort"), tmp_path / "m.onnx").path
    x, reference = fixtures.outputs(SPATIAL)["input"], fixtures.outputs(SPATIAL)["forward"]
    with open_runner(onnx_path, backend="openvino", threads=2) as runner:
        assert runner.inference_precision == "f32" and runner.backend == "openvino"
        fp32 = compare(reference, runner.run(x))
        assert runner.versions()["openvino"]
    assert fp32.cosine_min > 0.99999 and fp32.max_abs < 1e-4
    if HAS_BF16:
        with open_runner(onnx_path, backend="openvino", precision="bf16") as runner:
            bf16 = compare(reference, runner.run(x))
        assert 0.999 < bf16.cosine_mean < 1 and bf16.max_abs > 10 * fp32.max_abs  # really computed in bf16


def test_bf16_is_refused_on_a_cpu_without_bf16_units(monkeypatch, tmp_path):
    monkeypatch.setattr(ov_runner, "cpu_capabilities", lambda: frozenset({"FP32", "INT8"}))
    assert not BACKENDS["openvino"].runs("bf16") and BACKENDS["openvino"].runs("int8")
    with pytest.raises(Unavailable, match="this CPU has no bf16 units .*use fp32 or int8"):
        ov_runner.require_precision("bf16")
    with pytest.raises(UsageError, match="OpenVINO runs fp32, bf16, int8, not fp8"):
        ov_runner.require_precision("fp8")


def test_backend_of_each_file_type():
    assert [default_backend(Path(f"m{s}")).name for s in (".onnx", ".xml", ".engine")] == ["onnxruntime", "openvino", "tensorrt"]
    openvino = BACKENDS["openvino"]
    assert openvino.opens(Path("m.onnx")) and openvino.opens(Path("m.xml")) and not openvino.opens(Path("m.engine"))
    assert not BACKENDS["onnxruntime"].opens(Path("m.xml"))
    assert [p for p in ("fp32", "fp16", "int8", "fp8") if openvino.runs(p)] == ["fp32", "int8"]
    with pytest.raises(UsageError, match="unknown artifact type '.bin'"):
        default_backend(Path("m.bin"))


def test_a_corrupt_ir_is_a_one_line_error(tmp_path):
    (tmp_path / "m.xml").write_text("<net>not an IR")
    with pytest.raises(UsageError, match=r"OpenVINO cannot load .*m\.xml: "):
        open_runner(tmp_path / "m.xml")
    with pytest.raises(UsageError, match=r"onnxruntime cannot run \.xml files"):
        open_runner(tmp_path / "m.xml", backend="onnxruntime")


# ---- IR ------------------------------------------------------------------------------------------

def test_each_ir_is_proven_against_torch_fp32(made, profile):
    for precision, result in made.items():
        m = result.manifest
        assert result.path.name == f"{SPATIAL}.ort.{precision}.xml" and _bin(result).is_file()
        assert m.kind == "openvino-ir" and m.precision == precision and m.versions["openvino"]
        assert set(m.files) == {result.path.name, _bin(result).name}
        assert result.parity.backend == "openvino" and result.parity.passed
        assert result.parity.threshold == profile.threshold(precision)
    fp32 = made["fp32"]
    assert fp32.manifest.inference_precision == "f32"
    assert fp32.parity.cosine_min > 0.99999 and fp32.parity.max_abs < 1e-4
    assert fp32.manifest.source_onnx.path.endswith(f"{SPATIAL}.ort.onnx")


def test_the_runner_reads_the_weights_instead_of_mapping_them(made, fixtures):
    """A mapped .bin stays resident beside the CPU plugin's repacked weights (L14 fp32: 2.9 against
    2.4 GiB), so the runner reads it: no mapping of the file while the model is compiled."""
    fp32 = made["fp32"]
    with open_runner(fp32.path) as runner:
        mapped = [line for line in Path("/proc/self/maps").read_text().splitlines() if line.endswith(str(_bin(fp32)))]
        tokens = runner.run(fixtures.outputs(SPATIAL)["input"])
    assert mapped == []
    assert compare(fixtures.outputs(SPATIAL)["forward"], tokens).cosine_min > 0.99999


def test_int8_ir_holds_int8_weights_from_the_qdq_graph(made):
    int8, fp32 = made["int8"], made["fp32"]
    assert int8.manifest.source_onnx.path.endswith(f"{SPATIAL}.ort.int8.onnx")
    # the converter folds each weight's Q/DQ pair into int8 constants: a third of the fp32 file
    assert _bin(int8).stat().st_size < 0.35 * _bin(fp32).stat().st_size
    assert 0.999 <= int8.parity.cosine_mean < fp32.parity.cosine_mean
    assert int8.manifest.inference_precision == ("bf16" if HAS_BF16 else "f32")


@pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bf16 units")
def test_bf16_ir_keeps_fp16_weights_and_computes_in_bf16(made):
    bf16, fp32 = made["bf16"], made["fp32"]
    assert bf16.manifest.inference_precision == "bf16"
    assert _bin(bf16).stat().st_size == pytest.approx(_bin(fp32).stat().st_size / 2, rel=0.02)
    assert 0.9999 < bf16.parity.cosine_mean < fp32.parity.cosine_mean


def test_an_ir_is_reused_while_its_source_and_openvino_match(spatial, profile, made, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    before = made["fp32"].path.stat().st_mtime_ns
    assert Plan.of(spatial, profile).ir("fp32").manifest == made["fp32"].manifest
    assert made["fp32"].path.stat().st_mtime_ns == before


def test_a_missed_threshold_writes_nothing_and_keeps_the_previous_ir(spatial, profile, made, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    strict = profile.model_copy(update={"parity": {"int8": 0.9999999}})
    path = Plan.of(spatial, strict).ir_path("int8")
    before = {p.name: p.read_bytes() for p in (path, _bin(made["int8"]))}
    path.with_name(path.name + ".json").write_text("{}")  # a stale manifest: the IR must be made again
    # the int8 ONNX that passed its own gate stays the source (a stricter int8 threshold would remake it too)
    source = Path(made["int8"].manifest.source_onnx.path)
    onnx = PrecisionResult.recorded(source, read_manifest(source))
    with pytest.raises(CheckFailed, match=r"the int8 IR misses its parity threshold on OpenVINO: token cosine mean "
                                          r"0\.99\d+ < 0\.9999999 .*nothing was written"):
        make_ir(torch_reference(spatial, onnx, lambda step: None), "int8", strict, path, lambda step: None, 0.0)
    assert {p.name: p.read_bytes() for p in (path, _bin(made["int8"]))} == before
    assert not list(path.parent.glob("*.partial"))


@pytest.mark.parametrize("free_mib, message", [
    (1, r"disk full while writing out/m\.xml \(0\.0 GiB free\); free space or use -o elsewhere"),
    (10_000, r"OpenVINO could not write m\.xml: basic_ios::clear: iostream error"),
])
def test_a_failed_ir_write_is_one_line_saying_why(made, tmp_path, monkeypatch, free_mib, message):
    """OpenVINO reports a full disk as an iostream error: the free space on the disk tells them apart."""
    import collections
    import shutil

    import openvino

    def fail(*args, **kwargs):
        raise RuntimeError("Exception from src/core/src/pass/serialize.cpp:1:\nbasic_ios::clear: iostream error")

    monkeypatch.setattr(openvino, "save_model", fail)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**40, 2**40, free_mib * 2**20))
    source = Path(made["fp32"].manifest.source_onnx.path)
    with pytest.raises(PeExportError, match=f"^{message}$"):
        convert(source, tmp_path / "m.xml", compress_to_fp16=False, destination=Path("out/m.xml"))
