"""Which frames Meta's `VideoTransform.load_video` takes (facebookresearch/perception_models,
core/transforms/video_transform.py), for a set of frame counts and rates: written to reference.json.

Run once, from a checkout of Meta's repo (its torchcodec decoder is replaced by one that only reports
the frame count and rate, and torchvision, which the frame choice does not use, by empty modules):

    python tests/model/plm_frames/make_reference.py /path/to/perception_models
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

# (frames, fps, max_frames): short and long clips at common rates, fewer frames than asked, one frame
CASES = [(40, 10.0, 32), (300, 30.0, 32), (3000, 29.97, 32), (45, 24.0, 32), (20, 25.0, 32), (1, 30.0, 32),
         (961, 30.0, 32), (1200, 60.0, 16), (7, 2.0, 32), (100, 0.8, 32)]


def _stub_modules(cases: dict) -> None:
    class Decoder:
        def __init__(self, path, device="cpu"):
            total, fps = cases[path]
            self.metadata = types.SimpleNamespace(average_fps=fps, num_frames=total)

        def get_frames_at(self, indices):
            return types.SimpleNamespace(data=list(indices))

    tv = types.ModuleType("torchvision")
    tv.transforms = types.ModuleType("torchvision.transforms")
    tv.transforms.functional = types.ModuleType("torchvision.transforms.functional")
    tv.transforms.functional.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
    tv.utils = types.ModuleType("torchvision.utils")
    tv.utils.draw_bounding_boxes = None
    codec = types.ModuleType("torchcodec")
    codec.decoders = types.ModuleType("torchcodec.decoders")
    codec.decoders.VideoDecoder = Decoder
    for module in (tv, tv.transforms, tv.transforms.functional, tv.utils, codec, codec.decoders):
        sys.modules[module.__name__] = module


def main(repo: Path) -> None:
    sys.path.insert(0, str(repo))
    files = {str(repo / "README.md") + f"#{i}": (total, fps) for i, (total, fps, _) in enumerate(CASES)}
    _stub_modules(files)
    from core.transforms.video_transform import VideoTransform

    transform = VideoTransform.__new__(VideoTransform)  # load_video uses no state
    out = []
    for (name, (total, fps)), (_, _, max_frames) in zip(files.items(), CASES):
        import os.path

        exists, os.path.exists = os.path.exists, lambda p: True
        try:
            _, positions = transform.load_video(name, max_frames=max_frames, sampling_fps=1)
        finally:
            os.path.exists = exists
        out.append({"frames": total, "fps": fps, "max_frames": max_frames, "positions": positions})
    (Path(__file__).parent / "reference.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
