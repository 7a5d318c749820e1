"""Reference tiles made with Meta's PerceptionLM image transform (`VariableSizeImageTransform` in
facebookresearch/perception_models `core/transforms/image_transform.py`, thumb+tile, 448 px, 36 tiles).

    python tests/model/plm_tiles/make_reference.py /path/to/perception_models

torchvision (which Meta's file imports) cannot be installed beside this torch, so its three calls on
PIL images are given as torchvision defines them: `F.resize(img, (h, w), BICUBIC)` is PIL's
`img.resize((w, h), BICUBIC)`, `ToTensor` divides the uint8 pixels by 255 in float32, and
`Normalize` subtracts the mean and divides by the std in place. Everything else is Meta's code.

Writes `grids.json` (the grid Meta picks for many image sizes) and `reference.npz` (for a few
generated images: the grid, each tile's sum in float64 and a strided sample of its pixels).
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
SAMPLE = (slice(None), slice(5, None, 37), slice(9, None, 41))  # channel, rows, columns of each tile
IMAGES = {"square": (320, 320), "4x3": (640, 480), "16x9": (1920, 1080), "tall": (300, 800), "very-large": (3000, 3000),
          "wide": (4000, 1000)}
GRID_SIZES = [(w, h) for w in (1, 100, 447, 448, 449, 640, 896, 1024, 1344, 1920, 2688, 2689, 4032, 8000)
              for h in (1, 100, 448, 480, 768, 1080, 1344, 2688, 3000, 6000)]


def pattern(width: int, height: int) -> Image.Image:
    """A deterministic RGB test image: gradients across, a checkerboard of 7 x 11 cells, and
    diagonal stripes, so that resampling and tile order both show."""
    y, x = np.mgrid[0:height, 0:width]
    red = x * 255 // max(width - 1, 1)
    green = ((x // 7 + y // 11) % 2) * 200 + 25
    blue = ((x + 2 * y) % 64) * 4
    return Image.fromarray(np.stack([red, green, blue], axis=-1).astype(np.uint8), "RGB")


def _torchvision() -> None:
    """torchvision's PIL-path resize, ToTensor and Normalize, under the names Meta's file imports."""
    class InterpolationMode:
        BICUBIC = Image.Resampling.BICUBIC
        BILINEAR = Image.Resampling.BILINEAR

    def resize(img, size, interpolation=Image.Resampling.BILINEAR):
        return img.resize((size[1], size[0]), interpolation)

    class ToTensor:
        def __call__(self, pic):
            pixels = torch.from_numpy(np.array(pic, np.uint8, copy=True))
            return pixels.view(pic.size[1], pic.size[0], 3).permute(2, 0, 1).contiguous().to(torch.float32).div(255)

    class Normalize:
        def __init__(self, mean, std, inplace=False):
            self.mean, self.std = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]

        def __call__(self, tensor):
            return tensor.sub_(self.mean).div_(self.std)

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.resize, functional.InterpolationMode = resize, InterpolationMode
    transforms = types.ModuleType("torchvision.transforms")
    transforms.ToTensor, transforms.Normalize, transforms.functional = ToTensor, Normalize, functional
    torchvision = types.ModuleType("torchvision")
    torchvision.transforms = transforms
    sys.modules.update({"torchvision": torchvision, "torchvision.transforms": transforms,
                        "torchvision.transforms.functional": functional})


def main() -> None:
    repo = Path(sys.argv[1])
    _torchvision()
    meta = types.ModuleType("image_transform")
    exec(compile((repo / "core" / "transforms" / "image_transform.py").read_text(), "image_transform.py", "exec"),
         meta.__dict__)
    transform = meta.get_image_transform("thumb+tile", image_res=448, max_num_tiles=36)
    grids = []
    for w, h in GRID_SIZES:
        grid = transform._fit_image_to_canvas(img_width=w, img_height=h, area_limit=False)
        grid = grid or transform._find_closest_aspect_ratio(img_width=w, img_height=h)
        grids.append({"width": w, "height": h, "columns": grid[0], "rows": grid[1]})
    (HERE / "grids.json").write_text(json.dumps(grids, indent=1) + "\n")
    arrays = {}
    for name, (w, h) in IMAGES.items():
        tiles, grid = transform(pattern(w, h))
        arrays[f"{name}/grid"] = np.array(grid)
        arrays[f"{name}/sums"] = tiles.double().sum(dim=(1, 2, 3)).numpy()
        arrays[f"{name}/sample"] = tiles[(slice(None), *SAMPLE)].numpy()
    np.savez_compressed(HERE / "reference.npz", **arrays)


if __name__ == "__main__":
    main()
