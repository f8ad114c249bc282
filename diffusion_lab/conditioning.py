"""What the UNet is conditioned on: Stable Diffusion 1.x/2.x vs SDXL, behind ONE text-embedding tensor.

SD 1.x/2.x: the UNet takes the text encoder's token embeddings c (B, L, D) as `encoder_hidden_states`.

SDXL (Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image Synthesis",
arXiv:2307.01952) conditions on more:
    c        = concat(CLIP ViT-L penultimate layer, OpenCLIP bigG penultimate layer)   (B, L, 768 + 1280 = 2048)
    pooled   = OpenCLIP bigG's projected pooled embedding                              (B, 1280)
    time_ids = (original height, width, crop top, crop left, target height, width)     (B, 6), "micro-conditioning"
and the UNet adds an embedding of (pooled, time_ids) to its timestep embedding (addition_embed_type "text_time").

Everything else in diffusion-lab (classifier-free guidance, null-text / negative-prompt / direct inversion, the
Inversion record, Prompt-to-Prompt) handles the condition as one tensor (B, L, D). For SDXL we therefore PACK the
pooled embedding as one extra row, zero-padded to width D:

    packed = [c_1, ..., c_L, (pooled, 0, ..., 0)]                                        (B, L + 1, D)

`encode_prompts` (text.py) returns it and `SDXLConditionedUNet` unpacks it before every UNet call, so a
null-text optimisation of the unconditional "embedding" optimises both its token embeddings and its pooled
embedding (the zero padding gets no gradient), negative-prompt inversion swaps in both, and the cross-attention
layers still see the L text tokens the tokenizer produced (P2P's token alignment is unchanged).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn


def is_sdxl(pipe) -> bool:
    """True for an SDXL-architecture pipeline: two text encoders and a UNet with "text_time" added conditioning."""
    return getattr(pipe, "text_encoder_2", None) is not None and (
        getattr(pipe.unet.config, "addition_embed_type", None) == "text_time"
    )


def pack_pooled(token_embeddings: Tensor, pooled_embeddings: Tensor) -> Tensor:
    """(B, L, D) token embeddings and (B, P) pooled embeddings (P <= D) -> (B, L + 1, D); row L = (pooled, 0...)."""
    batch, _, width = token_embeddings.shape
    pooled_width = pooled_embeddings.shape[-1]
    if pooled_width > width:
        raise ValueError(f"a pooled embedding of width {pooled_width} does not fit a token row of width {width}")
    row = token_embeddings.new_zeros(batch, 1, width)
    row[:, 0, :pooled_width] = pooled_embeddings
    return torch.cat([token_embeddings, row], dim=1)


def unpack_pooled(packed: Tensor, pooled_width: int) -> tuple[Tensor, Tensor]:
    """Inverse of `pack_pooled`: (B, L + 1, D) -> (token embeddings (B, L, D), pooled (B, pooled_width))."""
    return packed[:, :-1], packed[:, -1, :pooled_width]


def sdxl_time_ids(height: int, width: int, batch_size: int, dtype=torch.float32, device=None) -> Tensor:
    """SDXL's micro-conditioning (B, 6): original size = target size = (height, width) in pixels, no crop, as in
    diffusers' StableDiffusionXLPipeline with its defaults."""
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=device)
    return ids.expand(batch_size, -1)


class SDXLConditionedUNet(nn.Module):
    """An SDXL UNet called like an SD one: unet(sample, t, encoder_hidden_states=packed) (see the module docstring).

    The time ids are derived from the latent size (pixels = latent side x vae_scale_factor) at every call, so the
    same wrapper serves any resolution. `.unet` is the real UNet (attention processors live there).
    """

    def __init__(self, unet: nn.Module, pooled_width: int, vae_scale_factor: int) -> None:
        super().__init__()
        self.unet = unet
        self.pooled_width = int(pooled_width)
        self.vae_scale_factor = int(vae_scale_factor)

    @property
    def config(self):
        return self.unet.config

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def forward(self, sample: Tensor, timestep, encoder_hidden_states: Tensor, **unet_kwargs):
        tokens, pooled = unpack_pooled(encoder_hidden_states, self.pooled_width)  # (B, L, D), (B, P)
        height, width = (side * self.vae_scale_factor for side in sample.shape[-2:])
        time_ids = sdxl_time_ids(height, width, sample.shape[0], tokens.dtype, tokens.device)  # (B, 6)
        added = {"text_embeds": pooled, "time_ids": time_ids}
        return self.unet(sample, timestep, encoder_hidden_states=tokens, added_cond_kwargs=added, **unet_kwargs)


def denoising_unet(pipe) -> nn.Module:
    """The module the denoisers call: the pipeline's UNet, or for SDXL an `SDXLConditionedUNet` around it."""
    if not is_sdxl(pipe):
        return pipe.unet
    from diffusion_lab.latents import vae_scale_factor

    return SDXLConditionedUNet(pipe.unet, pipe.text_encoder_2.config.projection_dim, vae_scale_factor(pipe))


@torch.no_grad()
def encode_sdxl_prompts(pipe, prompts: Sequence[str]) -> Tensor:
    """Packed SDXL conditions (B, L + 1, D) of checked prompts, computed by diffusers' own
    StableDiffusionXLPipeline.encode_prompt (both encoders' penultimate layers, the projected pooled embedding).

    The empty prompt gives zeros when the pipeline's config says force_zeros_for_empty_prompt (SDXL base does):
    that is the unconditional embedding diffusers samples with when no negative prompt is given.
    """
    device = pipe.text_encoder_2.device
    prompts = list(prompts)
    token_embeddings, _, pooled, _ = pipe.encode_prompt(
        prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    packed = pack_pooled(token_embeddings.float(), pooled.float())  # (B, L + 1, D)
    if getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        empty = torch.tensor([prompt == "" for prompt in prompts], device=packed.device)
        packed = torch.where(empty[:, None, None], torch.zeros_like(packed), packed)
    return packed
