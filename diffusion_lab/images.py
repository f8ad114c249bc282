"""Images in and out: whatever a user passes (a path, a PIL image, an array) -> an RGB PIL image -> a tensor.

Conventions used everywhere in diffusion-lab:
  * a PIL image is RGB, 8 bits per channel;
  * a "uint8 image" is a numpy array (H, W, 3) (or a batch (B, H, W, 3)) with values 0..255;
  * an "image tensor" is float32 (B, 3, H, W) with values in [-1, 1], what the VAE encoder expects
    (x = pixel / 127.5 - 1, the convention of Stable Diffusion's training code).

Anything that has to be changed to fit (another mode, another size) is converted with an
`ImageConversionWarning` that says from what to what; anything that cannot be an image raises an error that
says what was expected.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

ImageInput = Union[str, os.PathLike, Image.Image, np.ndarray]


class ImageConversionWarning(UserWarning):
    """An input image was converted (mode or size) to what the model needs."""


def _size_pair(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    """None, an int (square side) or (width, height) -> (width, height) or None."""
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    width, height = (int(s) for s in size)
    return (width, height)


def _array_to_pil(array: np.ndarray) -> Image.Image:
    """A numpy image (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), uint8 0..255 or float 0..1 -> PIL (mode L/RGB/RGBA)."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ValueError(
            f"an image array must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) (channels last), got "
            f"{tuple(array.shape)}; for a batch (B, H, W, C) use load_images, for (3, H, W) use array.transpose(1, 2, 0)"
        )
    if min(array.shape[:2]) == 0:
        raise ValueError(f"an image array must not be empty, got shape {tuple(array.shape)}")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == bool:
        pixels = array.astype(np.uint8) * 255
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ValueError("the image array contains NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"a float image array must have values in [0, 1], got [{low:.3g}, {high:.3g}]; "
                "pass uint8 0..255, or convert a [-1, 1] tensor with tensor_to_pil"
            )
        pixels = np.rint(array * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.integer):
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise ValueError(f"an integer image array must have values in 0..255, got {low}..{high}")
        pixels = array.astype(np.uint8)
    else:
        raise ValueError(f"cannot read an image array of dtype {array.dtype}; use uint8 (0..255) or float (0..1)")
    return Image.fromarray(np.ascontiguousarray(pixels))


def _open_path(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no image file at {str(path)!r}")
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a folder, not an image file")
    try:
        with Image.open(path) as opened:
            opened.load()
            return opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"could not read {str(path)!r} as an image (PNG, JPEG, ...): {error}") from error


def _high_depth_grey_to_rgb(image: Image.Image) -> tuple[Image.Image, str]:
    """A 16-bit (I;16*), 32-bit integer (I) or float (F) greyscale image as 8-bit RGB, scaled by its full range:
    65535 for 16-bit files (and for an I image whose values pass 255), 255 for an I image within 0..255, and
    1.0 for a float image within 0..1. PIL's own convert("RGB") clips at 255: a 16-bit PNG came out white."""
    grey = np.asarray(image, dtype=np.float64)
    largest = float(grey.max()) if grey.size else 0.0
    if image.mode.startswith("I;16") or (image.mode == "I" and largest > 255):
        full, depth = 65535.0, "16-bit"
    elif image.mode == "F" and largest <= 1.0:
        full, depth = 1.0, "float 0..1"
    elif image.mode == "F" and largest > 255:
        full, depth = 65535.0, "float 0..65535"
    else:
        full, depth = 255.0, "8-bit"
    eight_bit = np.clip(np.round(grey / full * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(eight_bit).convert("RGB"), f"{depth} grey levels scaled to 0..255"


def _to_rgb(image: Image.Image, source: str) -> Image.Image:
    """Convert any PIL mode to RGB; transparent pixels are composited on white. Warns unless it was RGB."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":  # 16/32-bit grey levels: PIL's convert clips them at 255
        converted, how = _high_depth_grey_to_rgb(image)
    elif image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        converted = Image.alpha_composite(white, rgba).convert("RGB")
        how = "transparent pixels composited on white"
    else:
        converted = image.convert("RGB")
        how = "colours converted by PIL"
    warnings.warn(f"{source}: converted image mode {image.mode} to RGB ({how})", ImageConversionWarning, stacklevel=3)
    return converted


def load_image(image: ImageInput, size: int | Sequence[int] | None = None) -> Image.Image:
    """Read one image as an RGB PIL image, resized to `size` if given.

    image: a file path (str or os.PathLike), a PIL image of any mode, or a numpy array (H, W) / (H, W, 1) /
        (H, W, 3) / (H, W, 4), uint8 0..255 or float 0..1.
    size: None (keep), an int (a square side) or (width, height). A different size is resized with a
        Lanczos filter and an `ImageConversionWarning` saying from what to what (and that the aspect ratio
        changed, when it did); a mode other than RGB is converted with such a warning too.
    Raises FileNotFoundError (missing file), ValueError (unreadable file, wrong array shape, dtype or range),
    TypeError (anything else).
    """
    if isinstance(image, (str, os.PathLike)):
        source = f"image {str(image)!r}"
        pil = _open_path(image)
    elif isinstance(image, Image.Image):
        source = "PIL image"
        pil = image
    elif isinstance(image, np.ndarray):
        source = "image array"
        pil = _array_to_pil(image)
    elif isinstance(image, Tensor):
        raise TypeError(
            "load_image takes a path, a PIL image or a numpy array, not a torch tensor; "
            "convert a (3, H, W) tensor in [-1, 1] with diffusion_lab.images.tensor_to_pil"
        )
    else:
        raise TypeError(f"load_image takes a path, a PIL image or a numpy array, got {type(image).__name__}")
    if pil.width == 0 or pil.height == 0:
        raise ValueError(f"{source} is empty ({pil.width}x{pil.height})")
    pil = _to_rgb(pil, source)
    target = _size_pair(size)
    if target is not None and pil.size != target:
        if min(target) <= 0:
            raise ValueError(f"size must be positive, got {size}")
        aspect_note = ""
        if pil.width * target[1] != pil.height * target[0]:
            aspect_note = " (aspect ratio changed: crop the image first to keep it)"
        warnings.warn(
            f"{source}: resized from {pil.width}x{pil.height} to {target[0]}x{target[1]} pixels{aspect_note}",
            ImageConversionWarning,
            stacklevel=2,
        )
        pil = pil.resize(target, Image.Resampling.LANCZOS)
    return pil


def load_images(
    images: ImageInput | Sequence[ImageInput], size: int | Sequence[int] | None = None
) -> list[Image.Image]:
    """`load_image` for one input, a list of inputs, or a uint8/float batch array (B, H, W, C); always returns a list
    of RGB PIL images."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        images = list(images)
    if isinstance(images, (list, tuple)):
        if len(images) == 0:
            raise ValueError("no images given (an empty list)")
        return [load_image(image, size) for image in images]
    return [load_image(images, size)]


def pil_to_tensor(images: Image.Image | Sequence[Image.Image]) -> Tensor:
    """RGB PIL image(s) of one size -> float32 (B, 3, H, W) in [-1, 1] (pixel / 127.5 - 1)."""
    if isinstance(images, Image.Image):
        images = [images]
    arrays = []
    for image in images:
        if not isinstance(image, Image.Image) or image.mode != "RGB":
            raise ValueError("pil_to_tensor takes RGB PIL images; read inputs with load_image first")
        arrays.append(np.asarray(image, dtype=np.uint8))
    if len({a.shape for a in arrays}) != 1:
        raise ValueError(f"all images must have one size, got {sorted({a.shape[:2] for a in arrays})} (H, W)")
    pixels = torch.from_numpy(np.stack(arrays))  # (B, H, W, 3) uint8
    return pixels.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)  # (B, 3, H, W)


def to_uint8(images: Tensor) -> np.ndarray:
    """A tensor in [-1, 1], (B, 3, H, W) or (3, H, W) -> uint8 (B, H, W, 3) or (H, W, 3); values are clamped."""
    single = images.ndim == 3
    if single:
        images = images.unsqueeze(0)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected an image tensor (B, 3, H, W) or (3, H, W), got {tuple(images.shape)}")
    pixels = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # (B, 3, H, W)
    array = pixels.permute(0, 2, 3, 1).numpy()  # (B, H, W, 3)
    return array[0] if single else array


def tensor_to_pil(images: Tensor) -> Image.Image | list[Image.Image]:
    """A tensor in [-1, 1] -> an RGB PIL image for (3, H, W), a list of them for (B, 3, H, W)."""
    array = to_uint8(images)
    if array.ndim == 3:
        return Image.fromarray(array)
    return [Image.fromarray(a) for a in array]
