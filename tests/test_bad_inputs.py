"""Every command against bad input: the right exit code, one line on stderr, no traceback, no weights
loaded where the input could be checked first, and nothing new left in the working folder.

Add a row for each bad input a user meets; `{name}` in an argument is a file the `bad` fixture made.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import pytest

from pe_export.cli import main
from pe_export.model import load_model
from pe_export.onnx.export import ExportOptions, export_onnx

SPATIAL, CORE = "PE-Spatial-T16-512", "PE-Core-T16-384"
S = ["-v", SPATIAL, "--random-init"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A folder of broken and mismatched artifacts, made once."""
    folder = tmp_path_factory.mktemp("bad")
    good = export_onnx(load_model(SPATIAL, random_init=True), ExportOptions(target="ort"), folder / "good.onnx").path
    (folder / "empty.onnx").write_bytes(b"")
    (folder / "garbage.onnx").write_bytes(b"\x00\xffnot a protobuf" * 50)
    (folder / "truncated.onnx").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([], "g", [], [])), str(folder / "graphless.onnx"))
    model = onnx.load(str(good))
    onnx.save(model, str(folder / "nodata.onnx"), save_as_external_data=True, location="nodata.onnx.data",
              size_threshold=0)
    (folder / "nodata.onnx.data").unlink()
    shutil.copy(good, folder / "bare.onnx")  # no manifest: only its input shape tells its variant
    shutil.copy(good, folder / "badmanifest.onnx")
    (folder / "badmanifest.onnx.json").write_text("{ not json")
    (folder / "empty.engine").write_bytes(b"")
    (folder / "garbage.json").write_text("[1, 2")
    (folder / "bad.yaml").write_text("name: x\nvariant: [unclosed\n")
    (folder / "noimages").mkdir()
    (folder / "afolder.onnx").mkdir()
    return folder


CASES = [
    # command, arguments, exit code, words of the one error line
    ("check", ["{empty.onnx}"], 2, "is empty (0 bytes)"),
    ("check", ["{garbage.onnx}"], 2, "cannot read"),
    ("check", ["{graphless.onnx}"], 2, "holds no graph"),
    ("check", ["{missing.onnx}"], 2, "ONNX file not found"),
    ("check", ["{good.onnx}", "--target", "trt9"], 2, "unknown target 'trt9'"),
    ("parity", [*S, "{empty.onnx}"], 2, "is empty (0 bytes)"),
    ("parity", [*S, "{truncated.onnx}"], 2, "cannot read"),
    ("parity", [*S, "{garbage.onnx}"], 2, "cannot read"),
    ("parity", [*S, "{nodata.onnx}"], 2, "external data file nodata.onnx.data is missing"),
    ("parity", ["-v", CORE, "--random-init", "{good.onnx}"], 2, f"was made for {SPATIAL}, not {CORE}"),
    ("parity", ["-v", CORE, "--random-init", "{bare.onnx}"], 2, "is it for another variant?"),
    ("parity", [*S, "{badmanifest.onnx}"], 2, "cannot read the manifest"),
    ("parity", [*S, "{empty.engine}"], 2, "is empty (0 bytes)"),
    ("parity", [*S, "{model.txt}"], 2, "unknown artifact type '.txt'"),
    ("parity", [*S, "--images", "{noimages}", "{good.onnx}"], 2, "no images"),
    ("bench", [*S, "--baseline", "{garbage.json}"], 2, "cannot use"),
    ("bench", [*S, "--precision", "int4"], 2, "unknown precision"),
    ("bench", [*S, "--backends", "tvm"], 2, "unknown backend"),
    ("bench", [*S, "--batch", "x"], 2, "batch sizes must be positive"),
    ("trt", [*S, "--batch", "1,8"], 2, "optimization profile is N or MIN:OPT:MAX"),
    ("onnx", [*S, "--batch", "1:2:4"], 2, "give N or 'dynamic'"),
    ("bench", [*S, "--device", "cuda"], 3, "--device cuda needs a CUDA GPU"),
    ("quantize", [*S, "--precision", "int4"], 2, "unknown precision 'int4'"),
    ("quantize", [*S, "--precision", "int8", "--profile", "{bad.yaml}"], 2, "malformed YAML"),
    ("quantize", [*S, "--precision", "int8", "--calib", "{noimages}"], 2, "no images"),
    ("quantize", [*S, "--precision", "int8", "--profile", "nope"], 2, "no profile named 'nope'"),
    ("onnx", [*S, "-o", "{afolder.onnx}"], 2, "is a folder"),
    ("onnx", [*S, "--target", "trt9"], 2, "unknown target 'trt9'"),
    ("onnx", [*S, "--batch", "0"], 2, "batch sizes must be positive"),
    ("onnx", ["-v", "L41", "--random-init"], 2, "unknown variant 'L41'"),
    ("info", ["-v", SPATIAL, "-c", "{garbage.onnx}"], 2, "cannot read"),
    ("info", ["-v", SPATIAL, "-c", "x.pt", "--random-init"], 2, "either --checkpoint or --random-init"),
    ("trt", S, 3, "TensorRT is not installed"),
    ("trt", [*S, "--int8", "--fp8"], 2, "choose one precision"),
    ("serve", ["{missing.onnx}"], 2, "has no manifest beside it"),
    ("serve", ["{good.onnx}", "-v", CORE], 2, f"was made for {SPATIAL}, not {CORE}"),
    ("serve", ["{good.onnx}", "--device", "tpu"], 2, "unknown device 'tpu'"),
    ("serve", ["{good.onnx}", "--device", "cuda"], 3, "onnxruntime here has no CUDAExecutionProvider"),
    ("loadtest", ["--url", "http://example.com:8000"], 2, "a Triton server on this machine"),
    ("loadtest", ["--url", "http://localhost:9"], 2, "is the server running (pe-export serve)?"),
    ("loadtest", ["--concurrency", "0"], 2, "concurrency levels are positive numbers"),
]


@pytest.mark.parametrize("command, args, code, message", CASES, ids=[f"{c[0]}-{c[3]}" for c in CASES])
def test_bad_input_is_one_line_with_its_exit_code(bad, tmp_path, monkeypatch, forbid_loading, capsys, command, args, code,
                                                  message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "80")
    if command in ("parity", "quantize", "onnx", "check"):  # inputs these commands can check come first
        forbid_loading("loaded weights before checking input")
    argv = [str(bad / a[1:-1]) if a.startswith("{") else a for a in args]
    before = sorted(bad.rglob("*"))
    with pytest.raises(SystemExit) as exit_info:
        main([command, *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == code
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == [] and sorted(bad.rglob("*")) == before
