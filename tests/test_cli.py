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
    assert out.count("PE-") == 14 and "PE-Lang-L14-448-Tiling" in out


def test_info_with_checkpoint(fixtures, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    code, out, _ = run(capsys, "info", "--variant", "pe-core-t16-384", "--checkpoint", str(fixtures.checkpoint("PE-Core-T16-384")))
    assert code == 0
    assert "6,140,544" in out and "all 163 tensors match" in out
    assert "weights sha256" in out and "c50c192a91dee1b8" in out  # over the tensors in Meta's names, not the file


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
        (["quantize", "-v", "PE-Spatial-T16-512", "-c", "{PE-Spatial-T16-512}", "--precision", "int8"],
         "int8 of real weights needs real calibration images: give --calib a folder or glob"),
        (["sensitivity", "-v", "PE-Spatial-T16-512", "-c", "{PE-Spatial-T16-512}", "--precision", "fp8"],
         "fp8 of real weights needs real calibration images"),
        (["openvino", "-v", "PE-Spatial-T16-512", "-c", "{PE-Spatial-T16-512}", "--precision", "int8"],
         "int8 of real weights needs real calibration images"),
        (["quantize", "-v", "PE-Spatial-T16-512", "--random-init", "--precision", "fp16", "--auto-exclude"],
         "--auto-exclude chooses Q/DQ sites to keep in high precision; fp16 has none"),
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
    nodes = [helper.make_node("RotaryEmbedding", ["x", "c", "s", "p"], [f"y{i}"], name=f"rope{i}") for i in range(5)]
    outputs = [helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, [1, 2, 4, 8]) for i in range(5)]
    path = tmp_path / "r.onnx"
    onnx.save(helper.make_model(helper.make_graph(nodes, "g", [x], outputs), opset_imports=[helper.make_opsetid("", 23)]), str(path))
    code, out, _ = run(capsys, "check", str(path), "--target", "jetson")
    assert code == 1 and "6 problem(s)" in out
    assert "x rope0, rope1 and 3 more: RotaryEmbedding needs TensorRT 10.15+; TensorRT 10.3 on Jetson" in out
    assert len(out.strip().splitlines()) == 3  # the opset line, one line for the five nodes, the count
    code, out, _ = run(capsys, "check", str(path), "--target", "trt10.15")
    assert code == 0 and out.startswith("ok r.onnx")
    code, _, err = run(capsys, "check", str(path), "--target", "trt9")
    assert code == 2 and "unknown target 'trt9'" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--opset", "17"], "needs opset 23 or higher"),
        (["onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--target", "trt9"], "unknown target 'trt9'"),
        (["onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--features", "pooled"], "no attention pooler"),
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
    # against a baseline 100x faster (a cold first run on a busy machine is no match), the gate fails and names the row
    data = json.loads((tmp_path / "lat.json").read_text())
    for row in data["results"]:
        row["latency_ms"] = {k: v / 100 for k, v in row["latency_ms"].items()}
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


# ---- reading well in a pipe, a log or a narrow terminal ----------------------------------------------

def _terminal(monkeypatch, width: int):
    import io

    from rich.console import Console

    import pe_export.cli.output as output  # print_table's console

    screen = Console(file=io.StringIO(), force_terminal=True, width=width, color_system=None)
    monkeypatch.setattr(output, "console", screen)
    return screen.file


@pytest.mark.parametrize("width", [80, 200])
def test_tables_never_cut_a_name(capsys, monkeypatch, width):
    from pe_export.variants import VARIANTS

    screen = _terminal(monkeypatch, width)
    assert run(capsys, "variants")[0] == 0 and run(capsys, "profiles")[0] == 0
    shown = screen.getvalue()
    assert all(v.name in shown for v in VARIANTS) and "pe-lang-l14-jetson-orin" in shown and "…" not in shown


def test_tables_in_a_pipe_are_markdown_and_json_gives_the_data(capsys):
    import json

    code, out, _ = run(capsys, "variants")
    assert code == 0 and out.startswith("| name | alias |") and "| PE-Lang-L14-448 | L14 | Lang | 448 |" in out
    code, out, _ = run(capsys, "variants", "--json")
    lang = next(v for v in json.loads(out) if v["name"] == "PE-Lang-L14-448")
    assert (lang["parameters"], lang["tokens"], lang["GMACs"]) == (291415040, 1025, 346.7)
    code, out, _ = run(capsys, "profiles", "--json")
    jetson = next(p for p in json.loads(out) if p["name"] == "pe-lang-l14-jetson-orin")
    assert jetson["from"] == "shipped" and jetson["batch"] == [1, 1, 1] and jetson["target"] == "jetson"


def test_help_is_h_too_and_flags_show_as_flags(capsys):
    code, out, _ = run(capsys, "onnx", "-h")
    lines = {line.split()[1]: line for line in out.splitlines() if line.strip().startswith("│") and "--" in line}
    assert code == 0 and "--random-init" in lines and "--features" in lines
    assert "<bool>" not in lines["--random-init"] and "<bool>" not in lines["--strip-cls"]
    assert "[fused|decomposed" in out and "[tokens|pooled|im" in out  # 80 columns fold the longest list


def test_help_reflows_paragraphs_and_keeps_placeholders(capsys, monkeypatch):
    """A docstring paragraph is one paragraph at any width (not broken at its source lines), and the
    <placeholders> of option help survive the Markdown rendering."""
    monkeypatch.setenv("COLUMNS", "250")
    code, out, _ = run(capsys, "serve", "-h")
    assert code == 0 and any("the given ports. Everything is checked before the server starts;" in line
                             for line in out.splitlines())
    code, out, _ = run(capsys, "triton", "-h")
    assert code == 0 and "Add <name>_images" in out and "Default: <variant>-<precision>-<onnx|trt>." in out
    code, out, _ = run(capsys, "onnx", "-h")
    assert [line.strip(" •") for line in out.splitlines() if line.strip().startswith("• pe-export onnx")] == [
        "pe-export onnx --variant L14 --random-init",
        "pe-export onnx --variant L14 --checkpoint PE-Lang-L14-448.pt --target jetson --batch 1",
        "pe-export onnx --variant PE-Core-L14-336 --target ort -o core.onnx"]


def test_long_steps_are_lines_with_their_time(capsys, tmp_path):
    code, out, _ = run(capsys, "onnx", "-v", "PE-Spatial-T16-512", "--random-init", "--target", "jetson",
                       "-o", str(tmp_path / "m.onnx"))
    steps = [line for line in out.splitlines() if line.startswith("✓")]
    assert code == 0 and [s.rsplit(" (", 1)[0] for s in steps][1:] == [
        "✓ loading weights", "✓ computing torch reference outputs",
        "✓ tracing PE-Spatial-T16-512 and writing ONNX (opset 17)", "✓ checking the graph (onnx.checker, full)",
        "✓ proving parity: onnxruntime CPU against torch"]
    assert all(s.endswith(" s)") for s in steps)


def test_ctrl_c_says_interrupted_and_leaves_nothing(tmp_path, interruptible):
    import signal
    import subprocess
    import sys
    import time

    run_ = subprocess.Popen([sys.executable, "-m", "pe_export.cli", "onnx", "-v", "PE-Spatial-T16-512", "--random-init",
                             "-o", str(tmp_path / "out" / "m.onnx")], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **interruptible)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not run_.stdout.readline().startswith("✓ loading weights"):
        pass
    run_.send_signal(signal.SIGINT)
    _, err = run_.communicate(timeout=120)
    assert run_.returncode == 130 and err.strip() == "error: interrupted"
    assert list(tmp_path.iterdir()) == []


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
