"""Stored attention maps -> picture data (tensors and numpy arrays; plotting lives in viz.py).

Prompt-to-Prompt (Hertz et al. 2022, arXiv:2208.01626), Figures 2-4: the cross-attention map of a
word shows where its object is drawn; the principal components of the self-attention maps show
the image's layout (which pixels attend to which).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .controllers import PLACES, AttentionStore
from .tokens import prompt_token_ids, prompt_word_tokens


def cross_attention_per_word(
    store: AttentionStore,
    tokenizer,
    prompt: str,
    resolution,
    places=PLACES,
    prompt_index: int = 0,
    include_special_tokens: bool = False,
) -> list[tuple[str, np.ndarray]]:
    """[(word, (H, W) map), ...] in prompt order; a word of several tokens gets the sum of their maps
    (its share of the attention). With include_special_tokens the start and end tokens come first
    and last (the start token usually takes most of the attention)."""
    maps = store.average_cross_attention(resolution, places, prompt_index)  # (H, W, tokens)
    result = []
    if include_special_tokens:
        result.append((tokenizer.decode([prompt_token_ids(tokenizer, prompt)[0]]).strip(), maps[..., 0].numpy()))
    for word, columns in prompt_word_tokens(tokenizer, prompt):
        result.append((word, maps[..., columns].sum(dim=-1).numpy()))
    if include_special_tokens:
        ids = prompt_token_ids(tokenizer, prompt)
        result.append((tokenizer.decode([ids[-1]]).strip(), maps[..., len(ids) - 1].numpy()))
    return result


def self_attention_components(
    store: AttentionStore, resolution, n: int = 3, places=PLACES, prompt_index: int = 0
) -> np.ndarray:
    """The first `n` principal components of the averaged self-attention, as (n, H, W) maps.

    As P2P's show_self_attention_comp: rows of the (HW, HW) matrix are centred, and the top right
    singular vectors, reshaped to the map grid, are the components (their sign is arbitrary).
    """
    maps = store.average_self_attention(resolution, places, prompt_index)  # (H, W, HW)
    height, width, keys = maps.shape
    matrix = maps.reshape(height * width, keys).double()
    matrix = matrix - matrix.mean(dim=1, keepdim=True)
    _, _, right = torch.linalg.svd(matrix, full_matrices=False)  # right: (HW, HW)
    n = min(n, right.shape[0])
    return right[:n].reshape(n, height, width).float().numpy()


def upsample_map(attention_map, size, mode: str = "bilinear"):
    """Resize a (H, W) or (N, H, W) map to `size` (an int or (height, width)), same type as the input."""
    is_numpy = isinstance(attention_map, np.ndarray)
    tensor = torch.as_tensor(np.asarray(attention_map) if is_numpy else attention_map).float()
    size = (size, size) if isinstance(size, int) else tuple(size)
    squeeze = tensor.ndim == 2
    batch = tensor[None, None] if squeeze else tensor[:, None]
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    resized = F.interpolate(batch, size=size, mode=mode, **kwargs)
    resized = resized[0, 0] if squeeze else resized[:, 0]
    return resized.numpy() if is_numpy else resized


def mass_ratio_inside(attention_map, mask: np.ndarray) -> float:
    """How much of a map's mass lies inside `mask`, relative to a uniform map: (sum of the map inside the mask /
    sum of the map) / (mask's share of the pixels). 1: no better than uniform; 1 / share: all mass inside.
    The (h, w) map is upsampled (bilinear) to the (H, W) boolean mask first."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        raise ValueError("the mask is empty: there is no object to measure attention on")
    heat = np.clip(np.asarray(upsample_map(np.asarray(attention_map, np.float32), mask.shape)), 0, None)
    total = float(heat.sum())
    if total <= 0:
        return float("nan")
    return float(heat[mask].sum()) / total / float(mask.mean())


def normalize_map(attention_map):
    """Stretch a map to [0, 1] (its own minimum and maximum), for display."""
    low, high = attention_map.min(), attention_map.max()
    scale = high - low
    return (attention_map - low) / (scale if scale > 0 else 1)
