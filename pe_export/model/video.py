"""PerceptionLM's video input: frames at 1 fps, thinned uniformly to at most 32, each squashed to 448 x 448.

The frame choice is Meta's `VideoTransform.load_video`: every `round(fps)`-th frame from the first; when
that gives more than `max_frames`, `max_frames` of them uniformly; when fewer, `max_frames` (or every
frame of a shorter clip) uniformly over all frames. Each frame is resized as torchvision resizes a uint8
tensor (bicubic, antialiased, rounded back to uint8), then scaled to [-1, 1]. Decoding is PyAV's (the
`video` extra), which bundles FFmpeg.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from pe_export.errors import UsageError, require_extra
from pe_export.handoff import MAX_FRAMES, TILE
from pe_export.model.preprocess import MEAN, STD

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v")


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def uniform(count: int, chosen: int) -> list[int]:
    """`chosen` indices spread evenly over `range(count)`, both ends included (Meta's `uniform_sample`)."""
    stride = (count - 1) / (chosen - 1) if chosen > 1 else 0
    return [int(round(i * stride)) for i in range(chosen)]


def frame_positions(total: int, fps: float, max_frames: int = MAX_FRAMES, sampling_fps: int = 1) -> list[int]:
    """Which of a video's `total` frames PLM takes."""
    last = total - 1
    every = list(range(0, last + 1, int(round(fps / sampling_fps)) or 1))
    if len(every) > max_frames:
        return [every[i] for i in uniform(len(every), max_frames)]
    if len(every) < max_frames:
        return uniform(total, min(max_frames, total))
    return every


def _read(path: Path, max_frames: int) -> tuple[np.ndarray, list[int]]:
    """The frames PLM takes (RGB, NHWC uint8) and their positions: the packets are counted first, then
    only the frames taken are kept while decoding, so a long video never sits in memory."""
    import av

    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 1)
            total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
        if not total:
            raise UsageError(f"video {path} has no frames")
        positions = frame_positions(total, fps, max_frames)
        wanted, kept = set(positions), {}
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(video=0)):
                if index in wanted:
                    kept[index] = frame.to_ndarray(format="rgb24")
                if index >= positions[-1]:
                    break
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise UsageError(f"cannot read video {path}: {exc}") from exc
    if len(kept) < len(wanted):  # the container claimed more frames than it decodes to
        raise UsageError(f"video {path} decodes to fewer frames than it declares ({len(kept)} of {len(wanted)} found)")
    return np.stack([kept[i] for i in positions]), positions


def resize_frames(frames: np.ndarray, size: int = TILE) -> torch.Tensor:
    """(N, H, W, 3) uint8 frames as PLM's (N, 3, size, size) float32 in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float()
    x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    x = x.clamp(0, 255).round() / 255.0  # torchvision's uint8 result, then ToTensor's scale
    return ((x - MEAN) / STD).contiguous()


def plm_frames(path: str | Path, max_frames: int = MAX_FRAMES, size: int = TILE) -> tuple[torch.Tensor, list[int]]:
    """PLM's input for one video: (frames, 3, size, size) float32 and the positions of the frames taken."""
    path = Path(path)
    require_extra("video", "reading video", "av")
    if not path.is_file():
        raise UsageError(f"video not found: {path}")
    frames, positions = _read(path, max_frames)
    return resize_frames(frames, size), positions
