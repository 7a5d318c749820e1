"""The command line as users meet it: help, tables, one-line errors and exit codes."""

import pytest

from pe_export import __version__
from pe_export.cli import main


def run(capsys, *args):
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out, err


def test_help_and_version(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "variants" in out and "info" in out
    code, out, _ = run(capsys, "--version")
    assert code == 0 and __version__ in out


def test_variants_table(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "variants")
    assert code == 0
    assert "PE-Lang-L14-448" in out and "291,415,040" in out and "346.7" in out
    assert out.count("PE-") == 12


def test_info_with_checkpoint(fixtures, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "info", "--variant", "pe-core-t16-384", "--checkpoint", str(fixtures.checkpoint("PE-Core-T16-384")))
    assert code == 0
    assert "6,140,544" in out and "all 163 tensors match" in out and "4ffffb845efe932d" in out


def test_info_random_init(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "info", "-v", "PE-Spatial-T16-512", "--random-init", "--seed", "7")
    assert code == 0 and "random-init (seed 7)" in out and "5,683,200" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["info", "-v", "L41", "--random-init"], "unknown variant 'L41'; did you mean: L14"),
        (["info", "-v", "PE-Spatial-T16-512", "-c", "{PE-Core-T16-384}"], "is a PE-Core-T16-384 checkpoint"),
        (["info", "-v", "L14", "-c", "/no/such/file.pt"], "checkpoint not found"),
        (["info", "-v", "L14", "-c", "x.pt", "--random-init"], "either --checkpoint or --random-init"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(fixtures, capsys, args, message):
    args = [str(fixtures.checkpoint(a[1:-1])) if a.startswith("{") else a for a in args]  # {name}: its fixture
    code, _, err = run(capsys, *args)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback(capsys):
    from pe_export.errors import UsageError

    with pytest.raises(UsageError):
        main(["--debug", "info", "-v", "L41", "--random-init"])


def test_onnx_and_check_commands(fixtures, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "sp.onnx"
    code, out, _ = run(capsys, "onnx", "-v", "PE-Spatial-T16-512", "-c", str(fixtures.checkpoint("PE-Spatial-T16-512")),
                       "--target", "jetson", "--batch", "2", "-o", str(path))
    assert code == 0 and f"wrote {path}" in out and "cosine min" in out
    code, out, _ = run(capsys, "check", str(path), "--target", "jetson")
    assert code == 0 and out.startswith("ok sp.onnx: opset 17")
    code, out, _ = run(capsys, "check", str(path), "--target", "ort")
    assert code == 0


def test_check_lists_problems_and_exits_1(capsys, monkeypatch, tmp_path):
    import onnx
    from onnx import TensorProto, helper

    monkeypatch.setenv("COLUMNS", "200")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 8])
    node = helper.make_node("RotaryEmbedding", ["x", "c", "s", "p"], ["y"], name="rope0")
    graph = helper.make_graph([node], "g", [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 4, 8])])
    path = tmp_path / "r.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]), str(path))
    code, out, _ = run(capsys, "check", str(path), "--target", "jetson")
    assert code == 1
    assert "rope0: RotaryEmbedding needs TensorRT 10.15+" in out and "2 problem(s)" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--opset", "17"], "needs opset 23 or higher"),
        (["onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--target", "trt9"], "unknown target 'trt9'"),
        (["onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--output", "pooled"], "no attention pooler"),
    ],
)
def test_onnx_bad_input(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_parity_and_bench_commands(fixtures, capsys, monkeypatch, tmp_path):
    import json

    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    ckpt = str(fixtures.checkpoint("PE-Spatial-T16-512"))
    code, out, _ = run(capsys, "bench", "-v", "PE-Spatial-T16-512", "-c", ckpt, "--batch", "1", "--iters", "2",
                       "--warmup", "0", "--backends", "torch,onnxruntime,openvino", "--precision", "fp32,bf16",
                       "--json", "lat.json", "--md", "lat.md", "--plot", "lat.png")
    assert code == 0 and "| onnxruntime | fp32 | 1 |" in out and "| torch | bf16 | 1 |" in out
    assert "| openvino | fp32 | 1 |" in out and "| onnxruntime | bf16 |" not in out  # no bf16 kernels: skipped
    report = json.loads((tmp_path / "lat.json").read_text())
    assert report["schema"] == "pe-export/latency/1" and "onnxruntime bf16" in report["settings"]["skipped"]
    assert (tmp_path / "lat.png").read_bytes()[:4] == b"\x89PNG"
    # the bench made artifacts/<variant>/<variant>.ort.onnx and its IR; parity finds them by default
    code, out, _ = run(capsys, "parity", "-v", "PE-Spatial-T16-512", "-c", ckpt, "--synthetic", "2", "--json", "p.json",
                       "--backends", "onnxruntime,openvino")
    rows = {(r["artifact"], r["backend"]): r["passed"] for r in json.loads((tmp_path / "p.json").read_text())["results"]}
    assert code == 0 and rows[("PE-Spatial-T16-512.ort.onnx", "onnxruntime")] is True
    assert rows[("PE-Spatial-T16-512.ort.onnx", "openvino")] is rows[("PE-Spatial-T16-512.ort.fp32.xml", "openvino")] is True
    assert ("PE-Spatial-T16-512.ort.fp32.xml", "onnxruntime") not in rows
    # against a baseline that was far faster, the gate fails and names the row
    data = json.loads((tmp_path / "lat.json").read_text())
    for row in data["results"]:
        row["latency_ms"] = {k: v / 10 for k, v in row["latency_ms"].items()}
    (tmp_path / "fast.json").write_text(json.dumps(data))
    code, out, _ = run(capsys, "bench", "-v", "PE-Spatial-T16-512", "-c", ckpt, "--backends", "torch", "--iters", "2",
                       "--warmup", "0", "--baseline", "fast.json", "--max-regression", "50")
    assert code == 1 and "regressed torch fp32 batch 1" in out


def test_parity_with_wrong_weights_exits_1(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    path = tmp_path / "m.onnx"
    assert run(capsys, "onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--seed", "3", "-o", str(path))[0] == 0
    code, out, _ = run(capsys, "parity", "-v", "PE-Spatial-T16-512", "--random-init", str(path), "--synthetic", "1")
    assert code == 1 and "FAIL" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["bench", "-v", "PE-Spatial-T16-512", "--random-init", "--backends", "tvm"], "unknown backend(s) tvm"),
        (["bench", "-v", "PE-Spatial-T16-512", "--random-init", "--batch", "0"], "batch sizes must be positive"),
        (["bench", "-v", "PE-Spatial-T16-512", "--random-init", "--baseline", "/no/file.json"], "cannot use /no/file.json as a baseline"),
        (["parity", "-v", "PE-Spatial-T16-512", "--random-init", "/no/model.onnx"], "artifact not found"),
        (["parity", "-v", "PE-Spatial-T16-512", "--random-init", "--images", "/no/folder", "/no/model.onnx"], "no images"),
        (["parity", "-v", "PE-Spatial-T16-512", "--random-init", "--backends", "tvm", "m.onnx"], "unknown backend(s) tvm"),
        (["parity", "-v", "PE-Spatial-T16-512", "--random-init", "--backends", "tensorrt", "m.onnx"],
         "none of the 1 artifact(s) runs on tensorrt"),
    ],
)
def test_harness_bad_input(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and "Traceback" not in err


def test_profiles_and_quantize_commands(fixtures, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run(capsys, "profiles")
    assert code == 0 and "pe-lang-l14-jetson-orin" in out and "jetson" in out
    path = tmp_path / "sp.fp16.onnx"
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "quantize", "-v", "PE-Spatial-T16-512", "-c", str(fixtures.checkpoint("PE-Spatial-T16-512")),
                       "--precision", "fp16", "-o", str(path))
    assert code == 0 and f"wrote {path}" in out and "token cosine mean" in out and path.is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["quantize", "-v", "L14", "--random-init", "--precision", "fp8", "--profile", "pe-lang-l14-cpu-edge"], "cannot run fp8"),
        (["quantize", "-v", "L14", "--random-init", "--precision", "int8", "--profile", "nope"], "no profile named 'nope'"),
        (["quantize", "-v", "PE-Spatial-T16-512", "--random-init", "--precision", "int8", "--calib", "/no/such"], "neither a folder"),
    ],
)
def test_quantize_bad_input(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_openvino_command(fixtures, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "out" / "sp.xml"
    code, out, _ = run(capsys, "openvino", "-v", "PE-Spatial-T16-512", "-c", str(fixtures.checkpoint("PE-Spatial-T16-512")),
                       "--precision", "fp32", "-o", str(path))
    assert code == 0 and f"wrote {path} (fp32, float ops in f32" in out and "token cosine mean 1.00000" in out
    assert sorted(p.name for p in path.parent.iterdir()) == ["sp.bin", "sp.xml", "sp.xml.json"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["openvino", "-v", "PE-Spatial-T16-512", "--random-init", "--precision", "fp8"],
         "unknown precision 'fp8'; choose one of: fp32, bf16, int8"),
        (["openvino", "-v", "PE-Spatial-T16-512", "--random-init", "--profile", "pe-lang-l14-cpu-edge"],
         "profile pe-lang-l14-cpu-edge is for PE-Lang-L14-448, not PE-Spatial-T16-512"),
        (["openvino", "-v", "L14", "--random-init", "--precision", "fp32", "--profile", "pe-lang-l14-jetson-orin",
          "-o", "/proc/no/such/x.xml"], "cannot create the output folder"),
    ],
)
def test_openvino_bad_input(capsys, args, message):
    code, _, err = run(capsys, *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
