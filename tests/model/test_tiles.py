"""PLM's thumbnail and tiles against Meta's transform (references in plm_tiles/, made with Meta's code)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from pe_export.model.preprocess import preprocess
from pe_export.model.tiles import TileGrid, plm_tiles, tile_grid

HERE = Path(__file__).resolve().parent / "plm_tiles"
_spec = importlib.util.spec_from_file_location("make_reference", HERE / "make_reference.py")
reference = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference)
REFERENCE = np.load(HERE / "reference.npz")


def test_the_grid_is_metas_for_every_size():
    expected = json.loads((HERE / "grids.json").read_text())
    got = [{"width": g["width"], "height": g["height"], **vars(tile_grid(g["width"], g["height"]))} for g in expected]
    assert got == expected
    assert len({(g["columns"], g["rows"]) for g in expected}) > 10  # the sizes exercise many grids, both branches


@pytest.mark.parametrize("name", list(reference.IMAGES))
def test_tiles_equal_metas_pixel_for_pixel(name):
    tiles, grid = plm_tiles(reference.pattern(*reference.IMAGES[name]))
    columns, rows = REFERENCE[f"{name}/grid"]
    assert (grid.columns, grid.rows) == (columns, rows) and tiles.shape == (1 + columns * rows, 3, 448, 448)
    np.testing.assert_allclose(tiles[(slice(None), *reference.SAMPLE)].numpy(), REFERENCE[f"{name}/sample"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(tiles.double().sum(dim=(1, 2, 3)).numpy(), REFERENCE[f"{name}/sums"], rtol=1e-9, atol=1e-3)


def test_the_thumbnail_comes_first_and_tiles_go_row_by_row():
    image = reference.pattern(896, 448)
    tiles, grid = plm_tiles(image, max_tiles=2)
    assert grid == TileGrid(2, 1) and grid.tiles == 2
    assert np.array_equal(tiles[0].numpy(), preprocess(image, 448, "bicubic").numpy())
    left, right = image.crop((0, 0, 448, 448)), image.crop((448, 0, 896, 448))  # the canvas is the image itself
    assert np.array_equal(tiles[1].numpy(), preprocess(left, 448).numpy())
    assert np.array_equal(tiles[2].numpy(), preprocess(right, 448).numpy())
