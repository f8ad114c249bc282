"""Pictures rather than numbers: image grids with labels, attention-map overlays, simple plots.

Everything returns PIL images or matplotlib figures and never calls plt.show(), so the same code
serves notebooks (display the return value), widgets and headless runs (save it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw


def to_uint8_image(image) -> np.ndarray:
    """PIL / uint8 (H, W, 3) / float (H, W, 3) in [0, 1] / torch (3, H, W) in [-1, 1] -> uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if hasattr(image, "detach"):  # torch tensor (3, H, W) in [-1, 1]
        array = image.detach().float().cpu()
        if array.ndim == 3 and array.shape[0] in (1, 3):
            array = array.permute(1, 2, 0)
        array = ((array.clamp(-1, 1) + 1) * 127.5).round().numpy()
        return array.astype(np.uint8) if array.shape[-1] == 3 else np.repeat(array, 3, axis=-1).astype(np.uint8)
    array = np.asarray(image)
    if array.dtype != np.uint8:
        array = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array


def image_grid(
    images: Sequence,
    columns: Optional[int] = None,
    labels: Optional[Sequence[str]] = None,
    row_labels: Optional[Sequence[str]] = None,
    scale: int = 2,
    padding: int = 2,
    label_height: int = 12,
) -> Image.Image:
    """Images in a grid, each scaled by `scale` (nearest neighbour), with an optional label under each.

    A label wider than its image is wrapped at spaces onto a second line (the grid's label rows then grow)
    and cut only after that."""
    import textwrap

    arrays = [to_uint8_image(im) for im in images]
    if not arrays:
        raise ValueError("image_grid needs at least one image")
    columns = columns or len(arrays)
    rows = (len(arrays) + columns - 1) // columns
    h, w = arrays[0].shape[0] * scale, arrays[0].shape[1] * scale
    left = 0
    if row_labels:
        left = 7 * max(len(s) for s in row_labels) // 1 + 4
    characters = max(4, w // 6)  # PIL's default font is about 6 pixels per character
    label_lines = [textwrap.wrap(str(text), characters, break_long_words=False)[:2] if text else [] for text in (labels or [])]
    lines = max((len(wrapped) for wrapped in label_lines), default=1) if labels else 0
    cell_h = h + label_height * max(lines, 1 if labels else 0) + padding
    canvas = Image.new("RGB", (left + columns * (w + padding) + padding, rows * cell_h + padding), "white")
    draw = ImageDraw.Draw(canvas)
    for i, array in enumerate(arrays):
        r, c = divmod(i, columns)
        x, y = left + padding + c * (w + padding), padding + r * cell_h
        canvas.paste(Image.fromarray(array).resize((w, h), Image.NEAREST), (x, y))
        if labels and i < len(labels):
            for line, text in enumerate(label_lines[i]):
                draw.text((x + 1, y + h + line * label_height), text[:characters], fill="black")
    if row_labels:
        for r, text in enumerate(row_labels):
            draw.text((2, padding + r * cell_h + h // 2 - 5), str(text), fill="black")
    return canvas


def heatmap_overlay(image, heat: np.ndarray, alpha: float = 0.55, colormap: str = "jet") -> np.ndarray:
    """An (h, w) map stretched to [0, 1], upsampled to the image and blended on it: uint8 (H, W, 3)."""
    import matplotlib

    base = to_uint8_image(image).astype(np.float32)
    heat = np.asarray(heat, np.float32)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)
    heat_image = Image.fromarray((heat * 255).astype(np.uint8)).resize(base.shape[1::-1], Image.BILINEAR)
    coloured = matplotlib.colormaps[colormap](np.asarray(heat_image) / 255.0)[..., :3] * 255
    return np.clip((1 - alpha) * base + alpha * coloured, 0, 255).astype(np.uint8)


def heatmap_image(heat: np.ndarray, size: int = 64, colormap: str = "viridis") -> np.ndarray:
    """An (h, w) map stretched to its own min and max, as a uint8 (size, size, 3) picture."""
    import matplotlib

    heat = np.asarray(heat, np.float32)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-8)
    resized = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize((size, size), Image.BILINEAR)) / 255.0
    return (matplotlib.colormaps[colormap](resized)[..., :3] * 255).astype(np.uint8)


MAX_MARKED_POINTS = 50  # line_plot marks each point of a curve up to this many points


def line_plot(x, series: dict, xlabel: str, ylabel: str, title: str = "", logx: bool = False):
    """A small matplotlib figure with one line per entry of `series` ({label: y values})."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 3.2), dpi=100)
    axis = figure.add_subplot(1, 1, 1)
    marker = "o" if len(x) <= MAX_MARKED_POINTS else None  # markers on a dense curve only thicken the line
    for label, values in series.items():
        axis.plot(x, values, marker=marker, label=label)
    if logx:
        axis.set_xscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    return figure
