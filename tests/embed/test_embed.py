"""`pe-export embed` on the T16 fixture weights over generated images (a few broken): the rows equal the
runner on `preprocess`'s input of each image, on this machine and on a local Ray; a killed run resumes
without redoing its finished shards; another job's folder is refused; every source form reads the same."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pe_export.cli import main
from pe_export.embed import EmbedOptions, embed
from pe_export.model.inputs import model_input
from pe_export.runners import open_runner
from pe_export.validate import compare

pq = pytest.importorskip("pyarrow.parquet", reason="the embed extra (pyarrow) is part of the test install")
CORE, SPATIAL = "PE-Core-T16-384", "PE-Spatial-T16-512"
BROKEN = {"broken.jpg": b"not a jpeg at all", "empty.png": b""}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """30 images of varied sizes and formats, and two files that are no images."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(30):
        pixels = rng.integers(0, 256, (90 + 11 * i, 160 - 3 * i, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:03d}.{('jpg', 'png', 'webp')[i % 3]}")
    for name, data in BROKEN.items():
        (folder / name).write_bytes(data)
    return folder


@pytest.fixture(scope="module")
def core(t16_exports) -> Path:
    return t16_exports(CORE, target="ort").path


def _table(folder: Path):
    return pq.read_table(sorted(folder.glob("part-*.parquet")))


def _rows(folder: Path) -> tuple[list[str], np.ndarray]:
    table = _table(folder)
    return table.column("id").to_pylist(), np.array(table.column("embedding").to_pylist(), np.float32)


def _expected(artifact: Path, ids: list[str], variant: str) -> np.ndarray:
    """The runner on `preprocess`'s input of each image, one at a time."""
    with open_runner(artifact) as runner:
        return np.concatenate([runner.run(model_input(i, variant).pixel_values) for i in ids])


def test_local_rows_are_the_runner_on_preprocess_and_broken_images_are_listed(images, core, tmp_path):
    result = embed(str(images), core, tmp_path / "out", EmbedOptions(shard_size=8, batch=4))
    ids, vectors = _rows(tmp_path / "out")
    assert ids == sorted(str(p) for p in images.iterdir() if p.name not in BROKEN)
    assert vectors.shape == (30, 512)
    assert compare(_expected(core, ids, CORE), vectors).cosine_min >= 0.99999
    manifest = json.loads((tmp_path / "out" / "_embed.json").read_text())
    assert manifest == result.manifest and manifest["complete"]
    assert manifest["counts"] == {"images": 32, "embedded": 30, "failed": 2}
    assert manifest["shards"] == [f"part-{i:05d}.parquet" for i in range(4)] and result.written == 4
    assert {Path(f["id"]).name for f in manifest["failed"]} == set(BROKEN)
    assert all(f["reason"].startswith("cannot decode") for f in manifest["failed"])
    assert manifest["key"]["artifact"] == json.loads(core.with_name(core.name + ".json").read_text())["identity"]
    assert (manifest["variant"], manifest["output"], manifest["dims"]) == (CORE, "pooled", [512])


def test_ray_gives_the_same_rows_as_local(images, core, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is part of the test install")
    local = embed(str(images), core, tmp_path / "local", EmbedOptions(shard_size=16))
    ray = embed(str(images), core, tmp_path / "ray", EmbedOptions(shard_size=16, engine="ray", workers=1))
    (local_ids, local_rows), (ray_ids, ray_rows) = _rows(tmp_path / "local"), _rows(tmp_path / "ray")
    assert ray_ids == local_ids and len(ray_ids) == 30
    np.testing.assert_array_equal(ray_rows, local_rows)  # the same runner on the same batches: bit-identical
    assert ray.manifest["failed"] == local.manifest["failed"] and ray.manifest["engine"] == "ray"
    assert ray.manifest["key"] == local.manifest["key"]


def test_a_killed_run_resumes_without_redoing_finished_shards(images, core, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pe_export.cli", "embed", str(images), "-a", str(core), "-o", str(out),
               "--shard-size", "4", "--batch", "1", "--threads", "1", "--workers", "1"]
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while child.poll() is None and len(list(out.glob("part-*.parquet"))) < 2:
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait()
    finished = {p.name: p.stat().st_ino for p in out.glob("part-*.parquet")}
    assert 2 <= len(finished) < 8, "the run must be killed mid-way"
    assert not json.loads((out / "_embed.json").read_text())["complete"]
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming: {len(finished)} of 8 shards already written" in rerun.stdout
    assert {p.name: p.stat().st_ino for p in out.glob("part-*.parquet") if p.name in finished} == finished
    assert not list(out.glob(".*.partial"))
    ids, vectors = _rows(out)
    assert ids == sorted(str(p) for p in images.iterdir() if p.name not in BROKEN)
    assert compare(_expected(core, ids, CORE), vectors).cosine_min >= 0.99999
    assert json.loads((out / "_embed.json").read_text())["counts"]["failed"] == 2


def test_another_job_into_the_same_folder_is_refused_unless_overwrite(images, core, t16_exports, tmp_path, capsys):
    out = tmp_path / "out"
    embed(str(images), core, out, EmbedOptions(shard_size=32))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = embed(str(images), core, out, EmbedOptions(shard_size=32))
    assert (again.resumed, again.written) == (1, 0)  # 32 images: one shard, kept
    spatial = t16_exports(SPATIAL, target="ort").path
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(images), "-a", str(spatial), "-o", str(out)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "holds other output (artifact, options.reduce, options.shard_size, preprocessing.size differ)" in error and "--overwrite" in error
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    replaced = embed(str(images), spatial, out, EmbedOptions(shard_size=32, reduce="cls", overwrite=True))
    assert replaced.manifest["dims"] == [192] and replaced.manifest["reduce"] == "cls"


@pytest.mark.parametrize("reduce", ["mean", "cls", "none"])
def test_token_outputs_reduce_as_asked(images, t16_exports, tmp_path, reduce):
    spatial = t16_exports(SPATIAL, target="ort").path
    picked = tmp_path / "list.txt"
    picked.write_text("# three images, relative to this file\n" + "".join(
        f"{os.path.relpath(images / n, tmp_path)}\n" for n in ("000.jpg", "004.png", "broken.jpg")))
    result = embed(str(picked), spatial, tmp_path / "out", EmbedOptions(reduce=reduce, dtype="float16"))
    table = _table(tmp_path / "out")
    assert table.column("id").to_pylist() == [os.path.relpath(images / n, tmp_path) for n in ("000.jpg", "004.png")]
    tokens = _expected(spatial, [str(images / n) for n in ("000.jpg", "004.png")], SPATIAL)  # [2, 1025, 192]
    expected = {"mean": tokens[:, 1:].mean(1), "cls": tokens[:, 0], "none": tokens}[reduce]
    got = np.array(table.column("embedding").to_pylist(), np.float32)
    assert got.shape == expected.shape and str(table.schema.field("embedding").type.value_type).startswith(
        "fixed_size_list" if reduce == "none" else "halffloat")
    np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3)  # float16 storage
    assert result.manifest["dims"] == list(expected.shape[1:]) and result.manifest["counts"]["failed"] == 1


def test_parquet_sources_of_paths_and_of_image_bytes(images, core, tmp_path):
    import pyarrow as pa

    names = ["002.webp", "001.png", "broken.jpg", "003.jpg"]
    pq.write_table(pa.table({"path": [str(images / n) for n in names]}), tmp_path / "paths.parquet")
    pq.write_table(pa.table({"key": ["a", "b", "c", "d"], "jpg": [(images / n).read_bytes() for n in names]}),
                   tmp_path / "bytes.parquet")
    by_path = embed(str(tmp_path / "paths.parquet"), core, tmp_path / "p", EmbedOptions())
    by_bytes = embed(str(tmp_path / "bytes.parquet"), core, tmp_path / "b", EmbedOptions(column="jpg"))
    (path_ids, path_rows), (byte_ids, byte_rows) = _rows(tmp_path / "p"), _rows(tmp_path / "b")
    assert path_ids == [str(images / n) for n in ("002.webp", "001.png", "003.jpg")] and byte_ids == ["0", "1", "3"]
    np.testing.assert_array_equal(byte_rows, path_rows)
    assert compare(_expected(core, path_ids, CORE), path_rows).cosine_min >= 0.99999
    assert by_path.manifest["failed"][0]["id"].endswith("broken.jpg") and by_bytes.manifest["failed"][0]["id"] == "2"


BAD = {
    "no such source": (["nowhere/"], "source not found: nowhere/"),
    "no images": (["{empty}"], "no images in"),
    "pooled output": (["{images}", "--reduce", "cls"], "gives one pooled embedding per image; --reduce applies"),
    "no manifest": (["{images}", "-a", "{stray}"], "has no manifest beside it"),
    "missing column": (["{parquet}", "--column", "nope"], "has no column 'nope' (its columns: path)"),
    "wrong static batch": (["{images}", "--batch", "3", "-a", "{static}"], "takes batches of exactly 2; drop --batch"),
    "unknown backend": (["{images}", "--backend", "onnx"], "unknown backend(s) onnx; choose from"),
    "backend for another type": (["{images}", "--backend", "tensorrt"], "tensorrt cannot run .onnx files"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, images, core, t16_exports, tmp_path, capsys):
    import pyarrow as pa

    (tmp_path / "empty").mkdir()
    (tmp_path / "stray.onnx").write_bytes(core.read_bytes())
    pq.write_table(pa.table({"path": ["x.jpg"]}), tmp_path / "list.parquet")
    static = t16_exports(CORE, target="ort", batch=2).path if case == "wrong static batch" else core
    args, message = BAD[case]
    places = {"empty": tmp_path / "empty", "images": images, "stray": tmp_path / "stray.onnx",
              "parquet": tmp_path / "list.parquet", "static": static}
    args = [a.format(**places) for a in args]
    artifact = [] if "-a" in args else ["-a", str(core)]
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", *args, *artifact, "-o", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert message in " ".join(error.split()) and error.count("\n") == 1 and "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_without_ray_the_ray_engine_exits_3_before_any_work(images, core, tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    with pytest.raises(SystemExit) as exit_info:
        main(["embed", str(images), "-a", str(core), "-o", str(tmp_path / "out"), "--engine", "ray"])
    assert exit_info.value.code == 3
    assert "pip install 'pe-export[ray]'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_second_run_on_a_folder_being_written_is_refused(images, core, tmp_path):
    from pe_export.embed.output import locked
    from pe_export.errors import UsageError

    with locked(tmp_path / "out"):  # as a run in another process holds it
        with pytest.raises(UsageError, match="another pe-export embed is writing"):
            embed(str(images), core, tmp_path / "out", EmbedOptions())
    assert not list((tmp_path / "out").glob("part-*"))


def test_a_glob_and_a_single_image_are_sources_too(images, core, tmp_path):
    pngs = embed(str(images / "00*.png"), core, tmp_path / "glob", EmbedOptions())
    one = embed(str(images / "004.png"), core, tmp_path / "one", EmbedOptions())
    glob_ids, glob_rows = _rows(tmp_path / "glob")
    assert glob_ids == [str(images / n) for n in ("001.png", "004.png", "007.png")] and pngs.manifest["counts"]["failed"] == 0
    one_ids, one_rows = _rows(tmp_path / "one")
    assert one_ids == [str(images / "004.png")] and one.manifest["counts"]["images"] == 1
    assert compare(_expected(core, one_ids, CORE), one_rows).cosine_min >= 0.99999
    assert compare(glob_rows[1:2], one_rows).cosine_min >= 0.99999
