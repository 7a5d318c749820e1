"""`pe-export preprocess`: an image's tiles or a video's frames exactly as PLM makes them (frame choice
against Meta's `load_video`, references in plm_frames/), any other variant's single input, safe writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pe_export.cli import main
from pe_export.model.preprocess import preprocess
from pe_export.model.tiles import plm_tiles
from pe_export.model.video import frame_positions, plm_frames, resize_frames

FRAMES = json.loads((Path(__file__).resolve().parent / "plm_frames" / "reference.json").read_text())


@pytest.mark.parametrize("case", FRAMES, ids=lambda c: f"{c['frames']}@{c['fps']}")
def test_the_frames_taken_are_metas(case):
    got = frame_positions(case["frames"], case["fps"], case["max_frames"])
    if case["frames"] == 1:  # Meta's asks for a second frame past the end of a one-frame video
        assert case["positions"] == [0, 1] and got == [0]
    else:
        assert got == case["positions"]


def _video(path: Path, frames: int, fps: int, size=(96, 64)) -> Path:
    """A lossless (FFV1) video whose frame i is filled with the grey level 5 * i."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=fps)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv444p"
        for i in range(frames):
            picture = np.full((size[1], size[0], 3), 5 * i, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")))
        container.mux(stream.encode())
    return path


def test_a_video_gives_plms_frames_in_order(tmp_path):
    pytest.importorskip("av", reason="the video extra (PyAV) is not installed")
    frames, positions = plm_frames(_video(tmp_path / "clip.mkv", 45, 10))  # 4.5 s: 32 frames over all 45
    assert positions == frame_positions(45, 10.0) and len(positions) == 32 and frames.shape == (32, 3, 448, 448)
    grey = (frames.mean(dim=(1, 2, 3)).numpy() + 1) / 2 * 255
    np.testing.assert_allclose(grey, [5 * p for p in positions], atol=1.0)  # each frame is the one named
    still = np.full((1, 64, 96, 3), 200, np.uint8)  # a flat frame stays flat through the resize
    np.testing.assert_allclose(resize_frames(still).numpy(), 200 / 255 * 2 - 1, atol=1e-6)


def _cli(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["preprocess", *args])
    out, err = capsys.readouterr()
    return exit_info.value.code or 0, out + err


def test_preprocess_writes_plms_tiles_and_says_the_grid(tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("COLUMNS", "200")
    image = tmp_path / "wide.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 1000, 3), np.uint8)).save(image)
    out = tmp_path / "out" / "tiles.npy"
    code, said = _cli(capsys, str(image), "--variant", "PLM-3B", "--out", str(out))
    assert code == 0, said
    tiles, grid = plm_tiles(image)
    np.testing.assert_array_equal(np.load(out), tiles.numpy())
    assert (f"thumbnail + {grid.columns}x{grid.rows} grid ({grid.tiles} tiles): {grid.tiles + 1} x 256 = "
            f"{(grid.tiles + 1) * 256} tokens") in said
    single = tmp_path / "one.npy"
    code, said = _cli(capsys, str(image), "-v", "PE-Core-T16-384", "-o", str(single))
    assert code == 0 and np.array_equal(np.load(single), preprocess(image, 384).numpy()[None])
    video = tmp_path / "broken.mp4"
    video.write_bytes(b"no video in here")
    code, said = _cli(capsys, str(video), "-v", "L14", "-o", str(single))
    assert code == 2 and "video frames are PerceptionLM's input" in said
    before = out.read_bytes()
    for bad in ([str(tmp_path / "missing.png"), "-v", "PLM-3B", "-o", str(out)],
                [str(image), "-v", "PLM-3B", "-o", str(tmp_path / "tiles.txt")],
                [str(tmp_path / "broken.mp4"), "-v", "PLM-3B", "-o", str(out)]):
        code, said = _cli(capsys, *bad)
        assert code == 2 and len(said.strip().splitlines()) == 1, said
    assert out.read_bytes() == before and sorted(p.name for p in out.parent.iterdir()) == ["tiles.npy"]
