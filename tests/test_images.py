"""Reading user images: conversions warn (from what to what), unusable inputs fail with a clear error."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.images import ImageConversionWarning, load_image, load_images, pil_to_tensor, tensor_to_pil, to_uint8


def _pixels(height=8, width=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _no_warnings(call):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_path_pil_and_uint8_array_give_the_same_rgb_image(tmp_path):
    pixels = _pixels()
    path = tmp_path / "image.png"
    Image.fromarray(pixels).save(path)
    for source in (path, str(path), Image.fromarray(pixels), pixels):
        image = _no_warnings(lambda: load_image(source))
        assert image.mode == "RGB" and np.array_equal(np.asarray(image), pixels)


def test_float_array_in_unit_range_and_grayscale_array():
    pixels = _pixels()
    image = _no_warnings(lambda: load_image(pixels.astype(np.float64) / 255.0))
    assert np.array_equal(np.asarray(image), pixels)
    with pytest.warns(ImageConversionWarning, match="mode L to RGB"):
        gray = load_image(pixels[..., 0])
    assert np.array_equal(np.asarray(gray), np.repeat(pixels[..., :1], 3, axis=2))


def test_rgba_is_composited_on_white_with_a_warning():
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255  # red, fully transparent in the left half
    rgba[:, 2:, 3] = 255
    with pytest.warns(ImageConversionWarning, match="RGBA to RGB.*composited on white"):
        image = np.asarray(load_image(Image.fromarray(rgba)))
    assert (image[:, :2] == 255).all() and (image[:, 2:] == [255, 0, 0]).all()


def test_resize_warns_from_and_to_and_mentions_aspect_ratio():
    with pytest.warns(ImageConversionWarning, match=r"resized from 12x8 to 6x4 pixels") as record:
        image = load_image(_pixels(8, 12), size=(6, 4))
    assert image.size == (6, 4) and "aspect" not in str(record[0].message)
    with pytest.warns(ImageConversionWarning, match=r"from 12x8 to 16x16 pixels \(aspect ratio changed"):
        assert load_image(_pixels(8, 12), size=16).size == (16, 16)
    assert _no_warnings(lambda: load_image(_pixels(16, 16), size=16)).size == (16, 16)


def test_clear_errors_for_unusable_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file"):
        load_image(tmp_path / "missing.png")
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("hello")
    with pytest.raises(ValueError, match="could not read .* as an image"):
        load_image(not_an_image)
    with pytest.raises(IsADirectoryError):
        load_image(tmp_path)
    with pytest.raises(ValueError, match=r"shape \(H, W\), \(H, W, 1\), \(H, W, 3\)"):
        load_image(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match=r"transpose"):
        load_image(np.zeros((3, 8, 8), np.uint8))
    with pytest.raises(ValueError, match=r"values in \[0, 1\]"):
        load_image(np.full((4, 4, 3), 2.0))
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan))
    with pytest.raises(ValueError, match="empty"):
        load_image(np.zeros((0, 4, 3), np.uint8))
    with pytest.raises(TypeError, match="tensor_to_pil"):
        load_image(torch.zeros(3, 4, 4))
    with pytest.raises(TypeError, match="got NoneType"):
        load_image(None)
    with pytest.raises(ValueError, match="no images"):
        load_images([])
    with pytest.raises(ValueError, match="use load_images"):
        load_image(np.zeros((2, 8, 8, 3), np.uint8))
    assert len(load_images(np.zeros((2, 8, 8, 3), np.uint8))) == 2


def test_tensor_round_trip_is_exact_and_in_range():
    images = [Image.fromarray(_pixels(seed=s)) for s in range(2)]
    tensor = pil_to_tensor(images)
    assert tensor.shape == (2, 3, 8, 8) and tensor.dtype == torch.float32
    assert tensor.min() >= -1 and tensor.max() <= 1
    assert np.array_equal(to_uint8(tensor), np.stack([np.asarray(i) for i in images]))
    back = tensor_to_pil(tensor)
    assert [np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(back, images)] == [True, True]
    assert isinstance(tensor_to_pil(tensor[0]), Image.Image) and to_uint8(tensor[0]).shape == (8, 8, 3)
    with pytest.raises(ValueError, match="one size"):
        pil_to_tensor([Image.fromarray(_pixels(8, 8)), Image.fromarray(_pixels(4, 4))])
