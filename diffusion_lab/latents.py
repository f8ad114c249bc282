"""Pixels <-> latents through the pipeline's VAE (Rombach et al. 2022, "High-Resolution Image Synthesis with Latent
Diffusion Models", arXiv:2112.10752).

    z_0 = scaling_factor * E(x).mean          x in [-1, 1], (B, 3, H, W)  ->  z_0 (B, 4, H / f, W / f)
    x_hat = D(z_0 / scaling_factor)

The diffusion model (and every inversion) lives in z-space. We encode with the MEAN of the encoder's Gaussian
latent_dist, not a sample of it: inversion wants the one latent that stands for the image, and a sample would add
noise the model cannot explain. `scaling_factor` (0.18215 for SD 1.x, 1 / latent std for shapes-tiny) makes the
latents roughly unit variance, the scale the noise schedule assumes. Latents are returned as float32 whatever the
VAE's dtype (inversion arithmetic runs in float32).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from diffusion_lab.images import ImageInput, load_images, pil_to_tensor, tensor_to_pil, to_uint8


def vae_scale_factor(pipe) -> int:
    """How many pixels one latent cell covers per side: 2 ** (number of VAE blocks - 1) (8 for SD, 4 for shapes-tiny)."""
    return 2 ** (len(pipe.vae.config.block_out_channels) - 1)


def image_size(pipe) -> int:
    """The image side the UNet was trained for: unet.config.sample_size * vae_scale_factor (512 for SD 1.5)."""
    return int(pipe.unet.config.sample_size) * vae_scale_factor(pipe)


def _shift_and_scale(pipe) -> tuple[float, float]:
    config = pipe.vae.config
    shift = getattr(config, "shift_factor", None) or 0.0
    return float(shift), float(config.scaling_factor)


def images_to_tensor(pipe, images: ImageInput | Sequence[ImageInput] | Tensor) -> Tensor:
    """Paths / PIL images / arrays (resized to the pipeline's image size, with a warning) or a (B, 3, H, W) tensor
    in [-1, 1] -> float32 (B, 3, H, W) in [-1, 1]."""
    if isinstance(images, Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"an image tensor must be (B, 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        return images.float()
    return pil_to_tensor(load_images(images, size=image_size(pipe)))


@torch.no_grad()
def encode_images(pipe, images: ImageInput | Sequence[ImageInput] | Tensor) -> Tensor:
    """z_0 = scaling_factor * (E(x).mean - shift_factor): float32 latents (B, C, H / f, W / f).

    images: a path, PIL image or array (or a list of them), or a (B, 3, H, W) tensor in [-1, 1].
    """
    vae = pipe.vae
    pixels = images_to_tensor(pipe, images).to(device=vae.device, dtype=vae.dtype)  # (B, 3, H, W)
    shift, scale = _shift_and_scale(pipe)
    mean = vae.encode(pixels).latent_dist.mean.float()  # (B, C, h, w)
    return (mean - shift) * scale


@torch.no_grad()
def decode_latents(pipe, latents: Tensor, output_type: str = "uint8") -> np.ndarray | list[Image.Image] | Tensor:
    """x_hat = D(z_0 / scaling_factor + shift_factor) for latents (B, C, h, w).

    output_type: "uint8" -> numpy (B, H, W, 3) 0..255; "pil" -> list of RGB PIL images;
    "tensor" -> float32 (B, 3, H, W) clamped to [-1, 1].
    """
    if output_type not in ("uint8", "pil", "tensor"):
        raise ValueError(f"output_type must be 'uint8', 'pil' or 'tensor', got {output_type!r}")
    vae = pipe.vae
    shift, scale = _shift_and_scale(pipe)
    scaled = (latents.float() / scale + shift).to(device=vae.device, dtype=vae.dtype)
    pixels = vae.decode(scaled).sample.float().clamp(-1, 1)  # (B, 3, H, W)
    if output_type == "tensor":
        return pixels
    if output_type == "pil":
        result = tensor_to_pil(pixels)
        return result if isinstance(result, list) else [result]
    return to_uint8(pixels)


def vae_round_trip(pipe, images: ImageInput | Sequence[ImageInput] | Tensor, output_type: str = "uint8"):
    """decode(encode(images)): the best any latent-space inversion can reconstruct (the "VAE ceiling")."""
    return decode_latents(pipe, encode_images(pipe, images), output_type)
