"""Pictures of Prompt-to-Prompt's attention maps (PIL images, for notebooks, widgets and reports).

Prompt-to-Prompt (Hertz et al. 2022, arXiv:2208.01626) rests on one observation, in the lecture's words:
"the spatial layout and geometry of the generated image depends on the cross-attention maps". These
figures show it:

    word_attention_figure          the lecture's "average attention maps across all timestamps": one map per
                                   word of a prompt, averaged over steps and layers of one resolution,
                                   optionally as overlays on the image
    word_attention_by_size_figure  one row per map size, on one shared scale: which layers place the words
    edit_attention_figure          the same, one row per prompt of an edit (source, then targets)
    attention_over_steps_figure    a strip per word: its map at each denoising step (the layout is decided early)
    self_attention_figure          principal components of the self-attention maps (P2P Fig. 4: the layout)
    word_overlay                   one word's map over the image

Every map comes from an AttentionStore (or any P2P controller, which is one), after sampling.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..viz import heatmap_image, heatmap_overlay, image_grid, to_uint8_image
from .controllers import PLACES, AttentionStore
from .maps import cross_attention_per_word, self_attention_components, upsample_map
from .tokens import prompt_word_tokens, word_token_indices

TITLE_HEIGHT = 14


def default_resolution(store: AttentionStore, is_cross: bool = True) -> int:
    """The map side figures use when none is given.

    Cross-attention: the stored side nearest to a quarter of the latent side, but at least 8 -- P2P's figures
    show Stable Diffusion's 16x16 maps of 64x64 latents; shapes-tiny's 16x16 latents give 8x8 maps, its
    sharpest (evaluate_model.py prints the mass per map size). Self-attention:
    the largest stored side up to 16 (its principal components need cells). Unknown latent size: as for
    self-attention."""
    if not store.layers:
        raise store._nothing_stored_error()
    sides = sorted({max(size) for size in store.available_resolutions(is_cross)})
    if not sides:
        raise ValueError(
            "no self-attention maps were stored: build the controller with store_self_attention=True"
            if not is_cross
            else "no cross-attention maps were stored"
        )
    if is_cross and store.latent_size is not None:
        target = max(8, max(store.latent_size) // 4)
        return min(sides, key=lambda side: (abs(side - target), -side))
    small_enough = [side for side in sides if side <= 16]
    return small_enough[-1] if small_enough else sides[0]


def word_attention_figure(
    store: AttentionStore,
    tokenizer,
    prompt: str,
    resolution: int | None = None,
    prompt_index: int = 0,
    image=None,
    include_special_tokens: bool = False,
    places: Sequence[str] = PLACES,
    size: int = 64,
    title: str | None = None,
) -> Image.Image:
    """One map per word of `prompt`, averaged over all steps and the layers of side `resolution`, labelled
    with the word. With `image`, the image comes first and each map is drawn over it.

    prompt_index: which prompt of the batch (0 = source). Each map is stretched to its own min and max, so
    a diffuse map looks sharper than it is; compare word maps of one figure by shape, not by brightness.
    """
    resolution = resolution or default_resolution(store)
    words = cross_attention_per_word(store, tokenizer, prompt, resolution, places, prompt_index, include_special_tokens)
    pictures, labels = [], []
    if image is not None:
        base = _resized(image, size)
        pictures.append(base)
        labels.append("image")
    for word, attention_map in words:  # attention_map: (resolution, resolution)
        pictures.append(heatmap_overlay(base, attention_map) if image is not None else heatmap_image(attention_map, size))
        labels.append(word)
    grid = image_grid(pictures, labels=labels, scale=1)
    return _titled(grid, title if title is not None else f"{prompt}  ({resolution}x{resolution}, all steps)")


def word_attention_by_size_figure(
    store: AttentionStore,
    tokenizer,
    prompt: str,
    prompt_index: int = 0,
    image=None,
    places: Sequence[str] = PLACES,
    size: int = 64,
) -> Image.Image:
    """One row per stored map size (largest first): each word's map averaged over all steps and that size's
    layers, all on ONE colour scale, from 0 to the largest value of any word at any size.

    A map is p(word | pixel), a share of each pixel's attention, so values compare across sizes: a size whose
    layers ignore where the words are looks flat here (word_attention_figure stretches every map to its own
    range and would make it look sharp)."""
    sides = sorted({max(side) for side in store.available_resolutions(is_cross=True)}, reverse=True)
    if not sides:
        raise store._nothing_stored_error()
    per_size = [(side, cross_attention_per_word(store, tokenizer, prompt, side, places, prompt_index)) for side in sides]
    high = max(float(word_map.max()) for _, words in per_size for _, word_map in words)
    rows = []
    for side, words in per_size:
        pictures = ([_resized(image, size)] if image is not None else []) + [
            _coloured(word_map, size, 0.0, high) for _, word_map in words
        ]
        labels = (["image"] if image is not None else []) + [word for word, _ in words]
        rows.append(_titled(image_grid(pictures, labels=labels, scale=1), f"{side}x{side} layers"))
    return _titled(_stacked(rows), f"{prompt}  (all steps; one scale, 0 to {high:.2f} of a pixel's attention)")


def edit_attention_figure(
    result, tokenizer=None, resolution: int | None = None, with_images: bool = True, size: int = 64
) -> Image.Image:
    """For an EditResult (diffusion_lab.editing): one row per prompt (source, then each target), its image and
    its word maps. tokenizer: the pipeline's (needed when the result ran without attention control)."""
    tokenizer = tokenizer or getattr(result.controller, "tokenizer", None)
    if tokenizer is None:
        raise ValueError("pass the pipeline's tokenizer: edit_attention_figure(result, pipe.tokenizer)")
    rows = [
        word_attention_figure(
            result.controller, tokenizer, prompt, resolution, index,
            image=result.images[index] if with_images else None, size=size,
            title=("source: " if index == 0 else f"target {index}: ") + prompt,
        )
        for index, prompt in enumerate(result.prompts)
    ]
    return _stacked(rows)


def word_overlay(
    image, store: AttentionStore, tokenizer, prompt: str, word: str, resolution: int | None = None,
    prompt_index: int = 0, size: int | None = None,
) -> Image.Image:
    """One word's averaged map over the image (a word of several tokens: the sum of their maps)."""
    resolution = resolution or default_resolution(store)
    columns = word_token_indices(tokenizer, prompt, word)
    maps = store.average_cross_attention(resolution, PLACES, prompt_index)  # (H, W, tokens)
    word_map = maps[..., columns].sum(dim=-1).numpy()  # (H, W)
    base = to_uint8_image(image) if size is None else _resized(image, size)
    return Image.fromarray(heatmap_overlay(base, word_map))


def attention_over_steps_figure(
    store: AttentionStore,
    tokenizer,
    prompt: str,
    words: Sequence[str] | None = None,
    resolution: int | None = None,
    prompt_index: int = 0,
    every: int = 1,
    size: int = 48,
    shared_scale: bool = True,
) -> Image.Image:
    """A strip per word: its map (layers of side `resolution` averaged) at every `every`-th denoising step,
    first step (most noise) on the left. Needs maps kept step by step: build the controller with
    keep_steps_for_resolutions=(resolution,) (per_step_resolutions in diffusion_lab.editing).

    shared_scale: one colour scale per strip (the map's growth over time shows); False stretches each map.
    """
    if not store.keep_steps_for_resolutions:
        raise ValueError(
            "no maps were kept step by step: build the controller with keep_steps_for_resolutions=(side,) "
            "(per_step_resolutions=(side,) in edit_generated / edit_real / run_edit)"
        )
    resolution = resolution or max(store.keep_steps_for_resolutions)
    over_steps = store.cross_attention_over_steps(resolution, PLACES, prompt_index)  # (steps, H, W, tokens)
    steps = store.kept_steps[:: max(1, int(every))]
    positions = [store.kept_steps.index(step) for step in steps]
    chosen = [(word, word_token_indices(tokenizer, prompt, word)) for word in words] if words else prompt_word_tokens(
        tokenizer, prompt
    )
    rows = []
    for word, columns in chosen:
        strip = over_steps[positions][..., columns].sum(dim=-1).numpy()  # (steps, H, W)
        low, high = (strip.min(), strip.max()) if shared_scale else (None, None)
        pictures = [_coloured(step_map, size, low, high) for step_map in strip]
        grid = image_grid(pictures, labels=[f"step {step}" for step in steps], scale=1)
        rows.append(_titled(grid, f"{word!r} in {prompt!r} over the steps ({resolution}x{resolution})"))
    return _stacked(rows)


def self_attention_figure(
    store: AttentionStore,
    resolution: int | None = None,
    num_components: int = 3,
    prompt_index: int = 0,
    image=None,
    size: int = 64,
) -> Image.Image:
    """The first principal components of the averaged self-attention (P2P Fig. 4): regions whose pixels
    attend alike, i.e. the layout that self-attention injection keeps. Needs store_self_attention=True.
    A component's sign is arbitrary."""
    resolution = resolution or default_resolution(store, is_cross=False)
    components = self_attention_components(store, resolution, num_components, PLACES, prompt_index)  # (n, H, W)
    pictures = ([_resized(image, size)] if image is not None else []) + [
        heatmap_image(component, size, colormap="gray") for component in components
    ]
    labels = (["image"] if image is not None else []) + [f"comp. {k + 1}" for k in range(len(components))]
    grid = image_grid(pictures, labels=labels, scale=1)
    return _titled(grid, f"self-attention components ({resolution}x{resolution}, all steps)")


# ---------------------------------------------------------------------------------------------------------
# Drawing helpers
# ---------------------------------------------------------------------------------------------------------


def _resized(image, size: int) -> np.ndarray:
    """uint8 (size, size, 3), nearest neighbour (pixels stay crisp)."""
    array = to_uint8_image(image)
    if array.shape[:2] == (size, size):
        return array
    return np.asarray(Image.fromarray(array).resize((size, size), Image.NEAREST))


def _coloured(heat: np.ndarray, size: int, low=None, high=None, colormap: str = "viridis") -> np.ndarray:
    """An (h, w) map coloured between low and high (its own min and max when None), upsampled: uint8 (size, size, 3)."""
    import matplotlib

    low = float(heat.min()) if low is None else float(low)
    high = float(heat.max()) if high is None else float(high)
    scaled = np.clip((heat - low) / max(high - low, 1e-12), 0, 1)
    resized = np.clip(upsample_map(scaled.astype(np.float32), size), 0, 1)  # (size, size)
    return (matplotlib.colormaps[colormap](resized)[..., :3] * 255).astype(np.uint8)


def _titled(picture: Image.Image, title: str) -> Image.Image:
    width = max(picture.width, 6 * len(title) + 4)  # PIL's default font: about 6 pixels a character
    canvas = Image.new("RGB", (width, picture.height + TITLE_HEIGHT), "white")
    canvas.paste(picture, (0, TITLE_HEIGHT))
    ImageDraw.Draw(canvas).text((2, 1), title, fill="black")
    return canvas


def _stacked(pictures: Sequence[Image.Image]) -> Image.Image:
    canvas = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)), "white")
    top = 0
    for picture in pictures:
        canvas.paste(picture, (0, top))
        top += picture.height
    return canvas
