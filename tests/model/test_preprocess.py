import numpy as np
import pytest
import torch
from PIL import Image

from pe_export.errors import UsageError
from pe_export.model.preprocess import preprocess, preprocess_batch


@pytest.fixture()
def image_array():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8)


def test_normalization_is_exact_at_native_size():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
    out = preprocess(pixels, 16)  # no resampling at the same size
    expected = (pixels.astype(np.float32) / 255.0 - 0.5) / 0.5
    assert out.shape == (3, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, torch.from_numpy(expected).permute(2, 0, 1))
    assert out.min() >= -1 and out.max() <= 1


def test_resize_ignores_aspect_ratio_and_uses_bilinear(image_array):
    out = preprocess(image_array, 24)
    resized = np.asarray(Image.fromarray(image_array).resize((24, 24), Image.Resampling.BILINEAR), dtype=np.float32)
    assert torch.equal(out, torch.from_numpy((resized / 255.0 - 0.5) / 0.5).permute(2, 0, 1))
    assert not torch.equal(out, preprocess(image_array, 24, "bicubic"))


def test_paths_pil_images_and_arrays_agree(tmp_path, image_array):
    path = tmp_path / "img.png"
    Image.fromarray(image_array).save(path)
    batch = preprocess_batch([path, str(path), Image.open(path), image_array], 32)
    assert batch.shape == (4, 3, 32, 32)
    assert all(torch.equal(batch[0], batch[i]) for i in range(1, 4))


def test_grey_and_rgba_become_rgb(image_array):
    grey = preprocess(image_array[..., 0], 8)
    assert grey.shape == (3, 8, 8) and torch.equal(grey[0], grey[2])
    rgba = Image.fromarray(np.dstack([image_array, np.full(image_array.shape[:2], 255, np.uint8)]))
    assert torch.equal(preprocess(rgba, 8), preprocess(image_array, 8))


def test_bad_inputs(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(UsageError, match="cannot read image"):
        preprocess(bad, 8)
    with pytest.raises(UsageError, match="image not found"):
        preprocess(tmp_path / "missing.png", 8)
    with pytest.raises(UsageError, match="uint8"):
        preprocess(np.zeros((4, 4, 3), np.float32), 8)
    with pytest.raises(UsageError, match="no images"):
        preprocess_batch([], 8)
