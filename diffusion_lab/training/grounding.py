"""The token grounding loss (TokenCompose, Wang et al. 2024, arXiv:2312.03626): where each object lies in the
latent grid, where each word of a caption belongs, the loss on the cross-attention maps, and the recorder of those maps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..attention.controllers import AttentionController
from ..shapes import render


def object_coverage(scenes, latent_size: int = 16, image_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Per scene and object, the share of each latent cell its mask covers: (N, MAX_OBJECTS, h, h) float16."""
    from ..progress import progress_bar
    from ..shapes import MAX_OBJECTS

    factor = image_size // latent_size
    out = torch.zeros(len(scenes), MAX_OBJECTS, latent_size, latent_size, dtype=torch.float16)
    for i in progress_bar(range(len(scenes)), progress, desc="masks"):
        masks = torch.from_numpy(render(scenes[i], image_size).masks).float()  # (objects, H, W)
        out[i, : len(masks)] = F.avg_pool2d(masks[:, None], factor)[:, 0].half()
    return out


OBJECT_WORD, BACKGROUND_WORD, POSITION_WORD = 1, 2, 3  # the kinds of supervised tokens of word_regions


def word_regions(
    prompts: list[str],
    coverage: torch.Tensor,
    num_tokens: int,
    timesteps: torch.Tensor | None = None,
    max_timestep: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token of each prompt belongs, for the grounding loss.

    coverage: (B, MAX_OBJECTS, h, w), the objects' cell coverage of each prompt's scene. timesteps (B,) and
    max_timestep: rows noised to t >= max_timestep supervise no word (near pure noise the layout is not yet
    decided, so there is nothing to ground). Returns
    regions (B, tokens, h, w) in [0, 1] (an attribute or position word: its object's coverage; the background
    colour word: 1 - all objects' coverage) and kinds (B, tokens) int: 0 for tokens without a region,
    OBJECT_WORD (size, colour, shape), POSITION_WORD ("top", "left", ...: the region of the object they place) or
    BACKGROUND_WORD. Token i + 1 is word i (bos first): the word-level tokenizer of shapes-tiny gives every word
    exactly one token.
    """
    from ..shapes import BACKGROUND_OWNER, word_owners
    from ..shapes.captions import POSITION_WORDS, check_words

    batch, _, h, w = coverage.shape
    regions = torch.zeros(batch, num_tokens, h, w)
    kinds = torch.zeros(batch, num_tokens, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        words = check_words(prompt)
        for i, owner in enumerate(word_owners(prompt)):
            if owner is None or i + 1 >= num_tokens:
                continue
            if owner == BACKGROUND_OWNER:
                regions[b, i + 1] = (1 - coverage[b].float().sum(0)).clamp_min(0)
                kinds[b, i + 1] = BACKGROUND_WORD
            else:
                regions[b, i + 1] = coverage[b, owner].float()
                kinds[b, i + 1] = POSITION_WORD if words[i] in POSITION_WORDS else OBJECT_WORD
    if timesteps is not None and max_timestep is not None:
        kinds[timesteps.cpu() >= max_timestep] = 0
    return regions, kinds


def grounding_loss(maps: list[torch.Tensor], regions: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Token grounding loss of TokenCompose (Wang et al. 2024, arXiv:2312.03626), per layer and word:

        L = mean over layers l and supervised words w of (1 - sum_{p in M_w} A^l_w(p) / sum_p A^l_w(p))^2

    A^l_w(p) is the cross-attention probability of word w at position p in layer l (averaged over
    heads), M_w the word's region at that layer's size: every cell its object touches for an
    attribute word, every cell at least half background for the background word. L = 0 when all of
    each word's attention lies on its region.

    maps: (B, heads, HW, tokens) per cross-attention layer (square maps); regions (B, tokens, h, w)
    from word_regions, kinds (B, tokens). To weigh some words differently, call it once per group of words with
    the other words' kinds set to 0 (train_unet does so for position words: `position_grounding_weight`).
    """
    supervised = kinds > 0
    if not supervised.any():
        return sum(m.sum() for m in maps) * 0.0
    losses, region_at_side = [], {}
    for attention in maps:
        side = math.isqrt(attention.shape[2])
        if side not in region_at_side:  # several layers share a map size
            pooled = F.adaptive_avg_pool2d(regions, side).flatten(2).to(attention.device)  # (B, tokens, HW)
            is_background = (kinds == BACKGROUND_WORD)[..., None].to(attention.device)
            region_at_side[side] = torch.where(is_background, pooled >= 0.5, pooled > 0)
        region = region_at_side[side]
        per_word = attention.mean(1).transpose(1, 2)  # (B, heads, HW, tokens) -> (B, tokens, HW)
        inside = (per_word * region).sum(-1) / per_word.sum(-1).clamp_min(1e-8)  # (B, tokens)
        losses.append(((1 - inside) ** 2)[supervised.to(attention.device)].mean())
    return torch.stack(losses).mean()


class CrossAttentionRecorder(AttentionController):
    """Keeps the cross-attention probabilities of one UNet call, graph included, for grounding_loss.

    Installed with `register_attention_control` around a training forward (no classifier-free
    guidance batch: every row is conditional); self-attention keeps diffusers' fused kernel."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.set_batch_layout(batch_size, has_uncond=False)
        self.maps: list[torch.Tensor] = []

    def controls_layer(self, layer_name: str, place_in_unet: str, is_cross: bool) -> bool:
        return is_cross

    def forward(self, conditional, is_cross, place_in_unet, layer_name):
        self.maps.append(conditional)  # (B, heads, HW, tokens)
        return conditional
