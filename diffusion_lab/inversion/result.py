"""The Inversion record: everything sampling needs from one inversion, reusable by many edits, saved as safetensors
(tensors) + JSON (everything else), never pickle."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from diffusion_lab.atomic_files import atomic_write_bytes
from diffusion_lab.denoisers import TextConditionedDenoiser

from .direct import source_rectifier
from .methods import check_method

FORMAT_VERSION = 1


@dataclass
class Inversion:
    """One inversion of a batch of B images, reusable by many edits without recomputing it.

    latents: float32 (S + 1, B, C, h, w) in sampling order: latents[0] = z_T, latents[i] the input of sampling
        step i, latents[-1] = z_0 (the VAE encoding of the images).
    timesteps: long (S,) the descending subsequence the trajectory lives on.
    text_embeddings: float32 (B, L, D), the source prompts' embeddings.
    uncond_embeddings: float32 (1, B', L, D) the same unconditional embedding for every step (the empty prompt's,
        or the source prompt's for negative-prompt inversion), or (S, B, L, D) one per step (null-text); B' is 1 or B.
    prompts: the source prompts; negative_prompt: the text of the initial unconditional embedding ("" = null text).
    method, guidance_scale: how it was inverted (sample at this guidance to reconstruct).
    model_name: the pipeline it belongs to; settings: the method's settings; diagnostics: per-step tensors;
    seconds: wall time of the inversion (without VAE encoding).
    noise_maps: float32 (S, B, C, h, w), edit-friendly inversion's z_t: the noise that sampling step i adds
        (times sigma_t, at settings["eta"]) to land on latents[i + 1]; None for the deterministic (eta = 0) methods.
    """

    latents: Tensor
    timesteps: Tensor
    text_embeddings: Tensor
    uncond_embeddings: Tensor
    prompts: list[str]
    method: str
    guidance_scale: float
    model_name: str = ""
    negative_prompt: str = ""
    settings: dict = field(default_factory=dict)
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    noise_maps: Tensor | None = None

    def __post_init__(self) -> None:
        check_method(self.method)
        steps = len(self.timesteps)
        if self.latents.ndim != 5 or self.latents.shape[0] != steps + 1:
            raise ValueError(f"latents must be (S + 1, B, C, h, w) with S = {steps}, got {tuple(self.latents.shape)}")
        if self.noise_maps is not None and self.noise_maps.shape != (steps, *self.latents.shape[1:]):
            raise ValueError(
                f"noise_maps must be (S, B, C, h, w) = {(steps, *self.latents.shape[1:])}, got {tuple(self.noise_maps.shape)}"
            )
        if (self.method == "edit_friendly") != (self.noise_maps is not None):
            raise ValueError("an edit_friendly inversion has noise_maps, and only it has them")
        if self.uncond_embeddings.ndim != 4 or self.uncond_embeddings.shape[0] not in (1, steps):
            raise ValueError(
                f"uncond_embeddings must be (1, B, L, D) or (S={steps}, B, L, D), got {tuple(self.uncond_embeddings.shape)}"
            )

    def __repr__(self) -> str:
        return (
            f"Inversion(method={self.method!r}, steps={self.num_steps}, guidance_scale={self.guidance_scale}, "
            f"batch={self.batch_size}, latent={tuple(self.latents.shape[2:])}, prompts={self.prompts!r}, "
            f"model={self.model_name!r}, per_step_uncond={self.per_step_uncond}, seconds={self.seconds:.2f})"
        )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def batch_size(self) -> int:
        return self.latents.shape[1]

    @property
    def z_T(self) -> Tensor:
        """The inverted noise (B, C, h, w): where sampling starts."""
        return self.latents[0]

    @property
    def z_0(self) -> Tensor:
        """The encoded images (B, C, h, w)."""
        return self.latents[-1]

    @property
    def eta(self) -> float:
        """The eta sampling from this inversion must use: 0 (DDIM) except for edit-friendly inversion."""
        return float(self.settings.get("eta", 0.0))

    @property
    def variance(self) -> str:
        """"eta" or "sigma_hat" (posterior.mean_and_noise_sigma), the variance the noise maps were recorded for."""
        return str(self.settings.get("variance", "eta"))

    def sampling_noises(self, rows: int | None = None, device=None) -> list[Tensor] | None:
        """`sample`'s `noises` for a batch of `rows` rows (default B): the recorded noise maps, each (B, C, h, w),
        an image's map shared by all rows of an edit batch (B = 1); None when this inversion has none."""
        if self.noise_maps is None:
            return None
        rows = self.batch_size if rows is None else int(rows)
        if rows != self.batch_size and self.batch_size != 1:
            raise ValueError(f"this inversion holds {self.batch_size} images; a batch of {rows} rows cannot share them")
        maps = self.noise_maps.to(self.latents.device if device is None else device)
        return [noise.expand(rows, *noise.shape[1:]) for noise in maps]  # S tensors (rows, C, h, w)

    @property
    def per_step_uncond(self) -> bool:
        """True when each sampling step has its own unconditional embedding (null-text)."""
        return self.uncond_embeddings.shape[0] > 1

    def source_rectifier(self, source_rows: int | None = None) -> Callable[[int, int, Tensor], Tensor] | None:
        """`sample`'s on_step_end for a direct inversion: put the first `source_rows` rows (default: all B, a
        reconstruction) back on the pivot after each step (`rectify_source_branch`). None for the other methods,
        whose sampling needs no correction."""
        if self.method != "direct":
            return None
        return source_rectifier(self.latents, self.batch_size if source_rows is None else int(source_rows))

    def uncond_embeddings_for_sampling(self) -> Tensor | list[Tensor]:
        """What TextConditionedDenoiser's `uncond_embeddings` takes: one (B', L, D) tensor, or a list of S of them."""
        if self.per_step_uncond:
            return list(self.uncond_embeddings)
        return self.uncond_embeddings[0]

    def denoiser(
        self,
        unet,
        text_embeddings: Tensor | None = None,
        guidance_scale: float | None = None,
        unet_kwargs: dict | None = None,
    ) -> TextConditionedDenoiser:
        """A guided denoiser that samples from this inversion: the source prompt (reconstruction) or other text
        embeddings (an edit; (1 | B, L, D), e.g. [source, target] rows for Prompt-to-Prompt, whose unconditional
        rows all get this inversion's per-step embeddings). `unet`: the pipeline (needed for SDXL, whose UNet
        also takes pooled embeddings and time ids: conditioning.denoising_unet) or its UNet."""
        from diffusion_lab.conditioning import denoising_unet

        unet = unet if isinstance(unet, torch.nn.Module) else denoising_unet(unet)  # a pipeline: its (SDXL-aware) UNet
        device = unet.device
        text = self.text_embeddings if text_embeddings is None else text_embeddings
        uncond = self.uncond_embeddings_for_sampling()
        uncond = [u.to(device) for u in uncond] if isinstance(uncond, list) else uncond.to(device)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        return TextConditionedDenoiser(unet, text.to(device), uncond, scale, unet_kwargs)

    def from_step(self, step: int) -> "Inversion":
        """This inversion with its first `step` sampling steps left out: sampling starts from latents[step] at
        timesteps[step] (edit-friendly inversion's T_skip), with the per-step embeddings, noise maps and
        diagnostics of the steps that are left."""
        step = int(step)
        if not 0 <= step < self.num_steps:
            raise ValueError(f"skip_steps must be in [0, {self.num_steps - 1}], got {step}")
        return Inversion(
            self.latents[step:], self.timesteps[step:], self.text_embeddings,
            self.uncond_embeddings[step:] if self.per_step_uncond else self.uncond_embeddings,
            list(self.prompts), self.method, self.guidance_scale, self.model_name, self.negative_prompt,
            dict(self.settings), {k: v[step:] for k, v in self.diagnostics.items()}, self.seconds,
            None if self.noise_maps is None else self.noise_maps[step:],
        )

    def to(self, device) -> "Inversion":
        """A copy with every tensor on `device`."""
        move = lambda x: x.to(device)  # noqa: E731
        return Inversion(
            move(self.latents), self.timesteps.clone(), move(self.text_embeddings), move(self.uncond_embeddings),
            list(self.prompts), self.method, self.guidance_scale, self.model_name, self.negative_prompt,
            dict(self.settings), {k: v.clone() for k, v in self.diagnostics.items()}, self.seconds,
            None if self.noise_maps is None else move(self.noise_maps),
        )

    # -- persistence: safetensors for tensors, JSON for the rest (never pickle) ---------------------------------
    TENSORS_FILE = "inversion.safetensors"
    JSON_FILE = "inversion.json"

    def save(self, folder: str | Path) -> Path:
        """Write `folder`/inversion.safetensors (tensors) and `folder`/inversion.json (everything else), each
        atomically (diffusion_lab.atomic_files) with the permissions the umask gives (safetensors' save_file makes
        owner-only files, which a course folder's other users could not read)."""
        from safetensors.torch import save

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "latents": self.latents,
            "timesteps": self.timesteps,
            "text_embeddings": self.text_embeddings,
            "uncond_embeddings": self.uncond_embeddings,
            **{f"diagnostics.{k}": v for k, v in self.diagnostics.items()},
            **({} if self.noise_maps is None else {"noise_maps": self.noise_maps}),
        }
        atomic_write_bytes(folder / self.TENSORS_FILE, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))
        record = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "guidance_scale": self.guidance_scale,
            "prompts": list(self.prompts),
            "negative_prompt": self.negative_prompt,
            "model_name": self.model_name,
            "num_steps": self.num_steps,
            "timesteps": self.timesteps.tolist(),
            "latent_shape": list(self.latents.shape[1:]),
            "settings": self.settings,
            "seconds": self.seconds,
        }
        atomic_write_bytes(folder / self.JSON_FILE, (json.dumps(record, indent=2) + "\n").encode())
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Inversion":
        """Read an inversion written by `save`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        json_path, tensors_path = folder / cls.JSON_FILE, folder / cls.TENSORS_FILE
        if not json_path.exists() or not tensors_path.exists():
            raise FileNotFoundError(
                f"no saved inversion in {str(folder)!r}: expected {cls.JSON_FILE} and {cls.TENSORS_FILE} (Inversion.save)"
            )
        record = json.loads(json_path.read_text())
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{json_path} has format_version {record.get('format_version')}, expected {FORMAT_VERSION}")
        tensors = load_file(str(tensors_path), device=str(device))
        diagnostics = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("diagnostics.")}
        return cls(
            latents=tensors["latents"],
            timesteps=tensors["timesteps"].cpu(),
            text_embeddings=tensors["text_embeddings"],
            uncond_embeddings=tensors["uncond_embeddings"],
            prompts=list(record["prompts"]),
            method=record["method"],
            guidance_scale=float(record["guidance_scale"]),
            model_name=record.get("model_name", ""),
            negative_prompt=record.get("negative_prompt", ""),
            settings=record.get("settings", {}),
            diagnostics=diagnostics,
            seconds=float(record.get("seconds", 0.0)),
            noise_maps=tensors.get("noise_maps"),
        )
