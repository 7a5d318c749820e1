"""PerceptionLM's image input: a thumbnail of the whole image, then the image cut into tiles.

PLM feeds its PE-Lang tower 448 px squares: first the whole image squashed to 448 x 448 (bicubic, no
aspect kept), then the image stretched to a grid of `columns x rows` tiles (at most 36) and cut
row-major. The grid is the one Meta's `VariableSizeImageTransform` picks: among the grids whose
canvas holds the image without shrinking it, the one its aspect-preserving upscale fills best;
when none does (a very large image), the grid whose aspect ratio is closest to the image's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

from pe_export.handoff import MAX_TILES, TILE
from pe_export.model.preprocess import ImageLike, normalize, open_image, preprocess


@dataclass(frozen=True)
class TileGrid:
    """How an image is cut: `columns` tiles across, `rows` down."""

    columns: int
    rows: int

    @property
    def tiles(self) -> int:
        return self.columns * self.rows

    @property
    def ratio(self) -> float:
        return self.columns / self.rows


def _grids_by_ratio(max_tiles: int) -> dict[float, list[TileGrid]]:
    """Every grid of at most `max_tiles` tiles, grouped by aspect ratio. The order decides ties, as in
    PLM: ratios in the order they first appear going from `max_tiles` tiles down, and within one
    ratio the grids with more tiles first."""
    groups: dict[float, list[TileGrid]] = {}
    for count in range(max_tiles, 0, -1):
        for columns in (c for c in range(1, count + 1) if count % c == 0):
            grid = TileGrid(columns, count // columns)
            groups.setdefault(grid.ratio, []).append(grid)
    return groups


def _upscaled(width: int, height: int, canvas_width: int, canvas_height: int) -> tuple[float, float]:
    """The image's size scaled into the canvas with its aspect kept, the short side rounded down
    (computed in PLM's order of operations, which decides its ties)."""
    factor, aspect = min(canvas_width / width, canvas_height / height), width / height
    if aspect > 1:
        return factor * width, math.floor(factor * width / aspect)
    return math.floor(factor * height * aspect), factor * height


def _fitting_grid(width: int, height: int, groups: dict[float, list[TileGrid]], tile: int) -> TileGrid | None:
    """The grid whose canvas holds the image unshrunk and lets it grow most along its short side
    (the later of equals), or None when no canvas is that large."""
    short = 0 if width < height else 1  # the side compared: width for portrait, height otherwise
    best, best_size = None, None
    for grid in (g for grids in groups.values() for g in grids):
        if grid.columns * tile < width or grid.rows * tile < height:
            continue
        size = _upscaled(width, height, grid.columns * tile, grid.rows * tile)
        if best is None or size[short] >= best_size[short]:
            best, best_size = grid, size
    return best


def _closest_grid(width: int, height: int, groups: dict[float, list[TileGrid]]) -> TileGrid:
    """The grid of the aspect ratio closest to the image's (not wider for landscape, taller for
    portrait) with the most tiles along the image's long side."""
    target = width / height
    if target >= 1:
        ratio = min((r for r in groups if r <= target), key=lambda r: abs(r - target))
        return max(groups[ratio], key=lambda g: g.columns)
    ratio = min((r for r in groups if r > target), key=lambda r: abs(1 / r - 1 / target))
    return max(groups[ratio], key=lambda g: g.rows)


def tile_grid(width: int, height: int, max_tiles: int = MAX_TILES, tile: int = TILE) -> TileGrid:
    """The grid PLM cuts a `width x height` image into."""
    groups = _grids_by_ratio(max_tiles)
    return _fitting_grid(width, height, groups, tile) or _closest_grid(width, height, groups)


def plm_tiles(image: ImageLike, max_tiles: int = MAX_TILES, tile: int = TILE) -> tuple[torch.Tensor, TileGrid]:
    """PLM's input for one image: (1 + tiles, 3, tile, tile) float32 in [-1, 1], the thumbnail first,
    then the tiles row by row, each left to right; and the grid."""
    picture = open_image(image)
    grid = tile_grid(*picture.size, max_tiles=max_tiles, tile=tile)
    canvas = normalize(picture.resize((grid.columns * tile, grid.rows * tile), Image.Resampling.BICUBIC))
    tiles = (canvas.view(3, grid.rows, tile, grid.columns, tile).permute(1, 3, 0, 2, 4)
             .reshape(grid.tiles, 3, tile, tile))
    return torch.cat([preprocess(picture, tile, "bicubic")[None], tiles]), grid
