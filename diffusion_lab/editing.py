"""Prompt-to-Prompt editing in one call: edit a generated image, or a real one through an Inversion.

Prompt-to-Prompt (Hertz et al. 2022, arXiv:2208.01626), in the lecture's words: "the spatial layout and
geometry of the generated image depends on the cross-attention maps", so P2P saves the cross-attention
maps of the source image and reuses the SAME maps while it generates with the edited prompt:

    x_T (a seed, or an Inversion of a real image), prompts [source, target 1, target 2, ...]
      -> one sampling run over the whole batch, every prompt from the same x_T, with an attention
         controller that injects the source's maps into each target (attention/controllers.py)
      -> images [source, edit 1, edit 2, ...]

Three kinds of edit (`PromptEdit.edit`):
    "replace"   word swap, "a cat on a couch" -> "a tiger on a couch": the targets take the source's maps
                (P2P's AttentionReplace); the prompts must line up token by token.
    "refine"    phrase addition, "a circle" -> "a red circle": aligned tokens take the source's maps, new
                tokens keep their own (P2P's AttentionRefine).
    "reweight"  scale the attention of words, {"red": 2.0} (P2P's AttentionReweight). `reweight` may also
                be given with "replace" or "refine": the scaling then applies on top of that edit.
Optionally `blend_words` keeps the source outside the region those words attend to (P2P's LocalBlend).
`attention_control=False` is the baseline without P2P: the same x_T, only the prompt changed.

    result = edit_generated(pipe, "a large red circle on a gray background",
                            ["a large blue circle on a gray background"], seed=3)
    result.source_image, result.edited_images          # uint8 (H, W, 3), (targets, H, W, 3)
    result = edit_real(pipe, "photo.png", "a cat on a couch", ["a tiger on a couch"], edit="refine")
    result.inversion                                    # reuse it: edit_real(pipe, result.inversion, ...)

The source row never depends on the targets: a run records it, and editing the same source again replays the
recording so that only the targets run (`source_cache`, attention/source_branch.py).

Widgets, labs and the batch pipeline describe an edit as a dict: `run_edit(pipe, PromptEdit.from_dict(d))`.
Every setting is checked before the first UNet call (`PromptEdit.check`), with errors that say what to do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from .attention import (
    SourceBranchCache,
    default_source_cache,
    AttentionRefine,
    AttentionReplace,
    AttentionReweight,
    AttentionStore,
    DEFAULT_MASK_STYLE,
    LocalBlend,
    MASK_STYLES,
    prompt_word_tokens,
    word_token_indices,
)
from .conditioning import denoising_unet
from .denoisers import TextConditionedDenoiser
from .generation import initial_noise, sample_with_controller
from .latents import decode_latents
from .models.defaults import CROSS_REPLACE_STEPS, SELF_REPLACE_STEPS, resolve_guidance
from .schedules import NoiseSchedule
from .text import PromptError, check_prompt, encode_prompts

PROMPT_EDIT_KINDS = ("replace", "refine", "reweight")


class EditError(ValueError):
    """An edit that cannot run as described; the message says why and what to change."""


@dataclass
class PromptEdit:
    """One Prompt-to-Prompt edit: the prompts and how the source's attention is reused.

    source_prompt: the prompt of the source image (prompt 0 of the batch).
    target_prompts: one or more edited prompts, all edited together in one batch.
    edit: "replace", "refine" or "reweight" (see the module docstring).
    cross_replace_steps: fraction of the steps (from the first) during which the targets take the source's
        cross-attention maps; a (start, end) pair of fractions; or {"default_": 0.8, "word": 0.4} per word of
        the targets (P2P's per-word schedule).
    self_replace_steps: fraction (or (start, end) pair) of the steps during which the targets take the
        source's self-attention maps (this keeps the layout).
    reweight: {word of the targets: scale}; 2.0 strengthens a word, 0 removes its effect.
    blend_words: a word or list of words; each prompt contributes the ones it contains to a local-blend mask,
        outside which the targets keep the source's latents (P2P's LocalBlend). None: no blending.
    blend_threshold: the local-blend mask is the words' normalised attention above this.
    blend_mask_style: how the local-blend mask is built from the maps (LocalBlend's mask_style): "official" (the
        default: the Prompt-to-Prompt repository's, the 16x16 maps only, max-pooled 3x3, nearest upsampling) or
        "ours" (every cross-attention layer upsampled bilinearly, averaged, thresholded, dilated by one latent
        pixel; the default before, for edits saved then). LocalBlend's docstring says why.
    self_replace_max_resolution: the largest map side whose self-attention is injected; None chooses
        `auto_self_replace_resolution` of the latent side (P2P's 16x16 for 64x64 latents).
    attention_control: False runs the baseline: the same x_T, only the prompt changed; the maps are only
        recorded, and edit, reweight and blend settings are ignored.
    """

    source_prompt: str
    target_prompts: list[str]
    edit: str = "replace"
    cross_replace_steps: Any = CROSS_REPLACE_STEPS
    self_replace_steps: Any = SELF_REPLACE_STEPS
    reweight: dict[str, float] | None = None
    blend_words: str | list[str] | None = None
    blend_threshold: float = 0.3
    blend_mask_style: str = DEFAULT_MASK_STYLE
    self_replace_max_resolution: int | None = None
    attention_control: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.target_prompts, str):
            self.target_prompts = [self.target_prompts]
        self.target_prompts = list(self.target_prompts or [])
        # JSON and YAML give lists where the controllers take (start, end) pairs.
        self.cross_replace_steps = _as_pair_if_list(self.cross_replace_steps)
        if isinstance(self.cross_replace_steps, dict):
            self.cross_replace_steps = {k: _as_pair_if_list(v) for k, v in self.cross_replace_steps.items()}
        self.self_replace_steps = _as_pair_if_list(self.self_replace_steps)
        if isinstance(self.blend_words, tuple):
            self.blend_words = list(self.blend_words)

    @property
    def prompts(self) -> list[str]:
        """[source, target 1, ...]: the batch of one edit run."""
        return [self.source_prompt, *self.target_prompts]

    # -- dicts (widgets, labs, batch files) --------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict) -> PromptEdit:
        """Build from a dict with the field names above; unknown keys are an error (typos)."""
        if not isinstance(data, dict):
            raise EditError(f"an edit is described by a dict, got {type(data).__name__}")
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise EditError(f"unknown edit setting(s) {unknown}; the settings are {known}")
        missing = [name for name in ("source_prompt", "target_prompts") if name not in data]
        if missing:
            raise EditError(f"an edit needs {missing}: e.g. {{'source_prompt': 'a cat', 'target_prompts': ['a dog']}}")
        return cls(**data)

    def to_dict(self) -> dict:
        """A JSON-ready dict that `from_dict` reads back."""
        return json_ready(dataclasses.asdict(self))

    # -- checks ------------------------------------------------------------------------------------------
    def check(self, tokenizer) -> None:
        """Raise an EditError for anything that would fail (or silently do nothing) once sampling runs."""
        if self.edit not in PROMPT_EDIT_KINDS:
            raise EditError(f"unknown edit {self.edit!r}; choose one of {', '.join(PROMPT_EDIT_KINDS)}")
        if not isinstance(self.source_prompt, str):
            raise EditError(f"source_prompt must be a string, got {type(self.source_prompt).__name__}")
        if not self.target_prompts:
            raise EditError("give at least one target prompt (target_prompts=['...'])")
        for role, prompt in _roles(self.prompts):
            try:
                check_prompt(tokenizer, prompt)
            except PromptError as error:
                raise EditError(f"the {role} {prompt!r}: {error}") from None
        if self.edit == "reweight" and not self.reweight:
            raise EditError("edit='reweight' needs reweight={word: scale}, e.g. reweight={'red': 2.0}")
        if self.reweight:
            self._check_reweight(tokenizer)
        if self.blend_mask_style not in MASK_STYLES:
            raise EditError(f"blend_mask_style must be one of {', '.join(MASK_STYLES)} (the local-blend mask: ours "
                            f"or the Prompt-to-Prompt repository's), got {self.blend_mask_style!r}")
        if self.blend_words:
            self._blend_words_per_prompt(tokenizer)
        if self.attention_control:
            self.build_controller(tokenizer, latent_side=64)  # checks alignment, schedules, local blend

    def _check_reweight(self, tokenizer) -> None:
        for word, scale in self.reweight.items():
            if not isinstance(scale, (int, float)) or not math.isfinite(scale):
                raise EditError(f"reweight[{word!r}] must be a finite number, got {scale!r}")
            for target in self.target_prompts:
                try:
                    word_token_indices(tokenizer, target, word)
                except ValueError:
                    words = [w for w, _ in prompt_word_tokens(tokenizer, target)]
                    raise EditError(
                        f"reweight word {word!r} is not in the target prompt {target!r} (its words: {words}); "
                        "reweighting scales the attention of a word of EVERY target prompt: check the spelling, "
                        "or edit target prompts that contain it separately"
                    ) from None

    def _blend_words_per_prompt(self, tokenizer) -> list[list[str]]:
        """For each prompt, the blend words it contains; error for a word that is in no prompt."""
        words = [self.blend_words] if isinstance(self.blend_words, str) else list(self.blend_words)
        per_prompt: list[list[str]] = [[] for _ in self.prompts]
        for word in words:
            for index, prompt in enumerate(self.prompts):
                try:
                    word_token_indices(tokenizer, prompt, word)
                except ValueError:
                    continue
                per_prompt[index].append(word)
            if not any(word in found for found in per_prompt):
                raise EditError(
                    f"blend word {word!r} is in none of the prompts {self.prompts}; local blending keeps the "
                    "source outside the region of words of the prompts, e.g. blend_words=['cat', 'tiger'] for "
                    "'a cat on a couch' -> 'a tiger on a couch'"
                )
        return per_prompt

    # -- the controller ----------------------------------------------------------------------------------
    def build_controller(
        self,
        tokenizer,
        latent_side: int,
        store_self_attention: bool = False,
        per_step_resolutions: Sequence[int] = (),
    ) -> AttentionStore:
        """The attention controller of this edit for latents of side `latent_side`.

        attention_control=False gives a plain AttentionStore (records the maps, changes nothing).
        per_step_resolutions: map sides whose maps are also kept step by step (for strips over time).
        """
        keep_steps = tuple(int(side) for side in per_step_resolutions)
        if not self.attention_control:
            return AttentionStore(
                len(self.prompts), store_self_attention=store_self_attention, keep_steps_for_resolutions=keep_steps
            )
        resolution = self.self_replace_max_resolution or auto_self_replace_resolution(latent_side)
        local_blend = None
        if self.blend_words:
            local_blend = LocalBlend(
                tokenizer, self.prompts, self._blend_words_per_prompt(tokenizer), threshold=self.blend_threshold,
                mask_style=self.blend_mask_style,
            )
        settings = dict(
            cross_replace_steps=self.cross_replace_steps,
            self_replace_steps=self.self_replace_steps,
            self_replace_max_resolution=resolution,
            local_blend=local_blend,
            store_self_attention=store_self_attention,
            keep_steps_for_resolutions=keep_steps,
        )
        try:
            if self.edit == "replace":
                base = AttentionReplace(tokenizer, self.prompts, **settings)
            elif self.edit == "refine":
                base = AttentionRefine(tokenizer, self.prompts, **settings)
            else:
                base = None
            if not self.reweight:
                return base
            return AttentionReweight(tokenizer, self.prompts, self.reweight, previous=base, **settings)
        except EditError:
            raise
        except ValueError as error:
            hint = ""
            if self.edit == "replace" and "AttentionRefine" in str(error):
                hint = " With PromptEdit / edit_generated / edit_real, that is edit='refine'."
            raise EditError(f"{error}{hint}") from None


def auto_self_replace_resolution(latent_side: int) -> int:
    """Largest map side whose self-attention P2P injects: a quarter of the latent side (16 for SD's 64x64
    latents, as in the paper), but at least 16 (or the latent side), so small models such as shapes-tiny
    (16x16 latents, maps of 16 and 8) get their layout injected too."""
    return max(latent_side // 4, min(latent_side, 16))


@dataclass
class EditResult:
    """What one edit run produced.

    images: uint8 (P, H, W, 3), row 0 the source (for a real image: its reconstruction), rows 1.. the edits.
    prompts: [source, target 1, ...]. edit: the PromptEdit that ran.
    controller: the attention controller after the run: an AttentionEdit (P2P) or an AttentionStore
        (attention_control=False); both hold the averaged cross-attention maps of every prompt.
    latents: (P, C, h, w) final z_0; initial_latents: (1, C, h, w) the x_T every prompt started from.
    timesteps: the descending timesteps sampled; guidance_scale: the w used.
    inversion: the Inversion a real image was edited through (None for a generated image); reuse it.
    seed: the seed of a generated image (None for a real one).
    """

    images: np.ndarray
    prompts: list[str]
    edit: PromptEdit
    controller: AttentionStore
    latents: Tensor
    initial_latents: Tensor
    timesteps: Tensor
    guidance_scale: float
    inversion: Any = None
    seed: int | None = None

    def __repr__(self) -> str:  # the dataclass default printed every tensor: pages of numbers
        images = "x".join(str(n) for n in self.images.shape)
        where = f"seed={self.seed}" if self.inversion is None else f"inverted ({type(self.inversion).__name__})"
        return (f"EditResult(edit={self.edit.edit!r}, prompts={self.prompts!r}, images={images} uint8, "
                f"steps={len(self.timesteps)}, guidance_scale={self.guidance_scale:g}, {where})")

    @property
    def source_image(self) -> np.ndarray:
        """uint8 (H, W, 3)."""
        return self.images[0]

    @property
    def edited_images(self) -> np.ndarray:
        """uint8 (targets, H, W, 3), in the order of target_prompts."""
        return self.images[1:]

    @property
    def target_prompts(self) -> list[str]:
        return self.prompts[1:]

    @property
    def attention_store(self) -> AttentionStore:
        """The stored attention maps (the controller is an AttentionStore)."""
        return self.controller

    def figure(self, scale: int = 2, input_image=None):
        """The source and the edits side by side, labelled (a PIL image); `input_image` first if given."""
        from .viz import image_grid

        images = ([input_image] if input_image is not None else []) + list(self.images)
        labels = (["input"] if input_image is not None else []) + ["source"] + [
            f"edit {index}" for index in range(1, len(self.prompts))
        ]
        return image_grid(images, labels=labels, scale=scale)


# ---------------------------------------------------------------------------------------------------------
# Running an edit
# ---------------------------------------------------------------------------------------------------------


def run_edit(
    pipe,
    edit: PromptEdit,
    *,
    inversion=None,
    seed: int = 0,
    num_steps: int = 50,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    store_self_attention: bool = False,
    per_step_resolutions: Sequence[int] = (),
    progress: bool = True,
    source_cache=True,
) -> EditResult:
    """Run one PromptEdit: from the seed's x_T (inversion None) or from an Inversion of a real image.

    Generated: x_T = initial_noise(pipe, 1, seed) for every prompt, unconditional embedding of
    `negative_prompt`, `num_steps` DDIM steps at `guidance_scale` (None: the model's, models.defaults).
    Real: x_T = inversion.z_T, the inversion's timesteps and (per-step) unconditional embeddings, at the
    inversion's guidance unless `guidance_scale` is given (num_steps and seed are then unused); an edit-friendly
    inversion also gives its eta and noise maps, shared by every row (its P2P edit).

    source_cache: True (the process-wide attention.default_source_cache()), a SourceBranchCache, or False. The
    source row of the batch does not depend on the targets, so a run records it (its latents per step, the
    attention the targets read of it, its image) and a later edit of the same source (same weights, source and
    negative prompt or inversion, seed, steps, guidance, schedule of replacement) replays the recording: the UNet
    then runs only the targets' rows. The results are the same (to float rounding; tests/test_p2p_speed.py).
    """
    edit.check(pipe.tokenizer)
    prompts = edit.prompts
    device = pipe.unet.device
    text_embeddings = encode_prompts(pipe, prompts).to(device)  # (P, L, D)
    if inversion is None:
        _check_steps(num_steps)
        guidance = resolve_guidance(pipe, guidance_scale)
        x_T = initial_noise(pipe, 1, seed)  # (1, C, h, w)
        timesteps = NoiseSchedule.from_scheduler_config(pipe.scheduler).timesteps(num_steps)
        uncond = encode_prompts(pipe, [negative_prompt]).to(device) if guidance != 1.0 else None
        denoiser = TextConditionedDenoiser(denoising_unet(pipe), text_embeddings, uncond, guidance)
    else:
        _check_inversion(pipe, inversion, edit.source_prompt, guidance_scale)
        guidance = inversion.guidance_scale if guidance_scale is None else float(guidance_scale)
        x_T = inversion.z_T  # (1, C, h, w)
        timesteps = inversion.timesteps
        denoiser = inversion.denoiser(pipe, text_embeddings, guidance)
        seed = None
    rectifier = None if inversion is None else inversion.source_rectifier(1)  # direct inversion: row 0 on the pivot
    controller = edit.build_controller(pipe.tokenizer, int(x_T.shape[-1]), store_self_attention, per_step_resolutions)
    # edit-friendly inversion: every row samples at its eta with the image's recorded noise maps
    eta, variance, noises = (0.0, "eta", None) if inversion is None else (
        inversion.eta, inversion.variance, inversion.sampling_noises(len(prompts), device))
    cache = _source_cache(source_cache)
    key = None
    if cache is not None:
        key = source_branch_key(pipe, denoiser, x_T, timesteps, controller, eta=eta, variance=variance, noises=noises,
                                inversion=inversion)
    branch = cache.get(key) if key is not None else None
    if branch is not None:  # a recorded source: run the targets only
        targets = len(prompts) - 1
        target_denoiser = (TextConditionedDenoiser(denoising_unet(pipe), text_embeddings[1:], denoiser.uncond_embeddings,
                                                   guidance) if inversion is None
                           else inversion.denoiser(pipe, text_embeddings[1:], guidance))
        target_noises = None if inversion is None else inversion.sampling_noises(targets, device)
        target_latents = sample_with_controller(pipe, target_denoiser, x_T.expand(targets, -1, -1, -1), timesteps,
                                                controller, progress=progress, eta=eta, noises=target_noises,
                                                variance=variance, source_branch=branch)
        latents = torch.cat([branch.final_latents().to(target_latents), target_latents])
        images = np.concatenate([branch.image[None], decode_latents(pipe, target_latents)])
    else:
        recording = cache.new_recording() if key is not None else None
        latents = sample_with_controller(pipe, denoiser, x_T.expand(len(prompts), -1, -1, -1), timesteps, controller,
                                         progress=progress, source_rectifier=rectifier, eta=eta, noises=noises,
                                         variance=variance, record_source=recording)
        images = decode_latents(pipe, latents)
        if recording is not None:
            recording.image = images[0].copy()
            if recording.complete(len(timesteps)):
                cache.put(key, recording)
    controller.use_source_branch()  # the result's controller holds no reference to the recording
    return EditResult(
        images=images,
        prompts=prompts,
        edit=edit,
        controller=controller,
        latents=latents,
        initial_latents=x_T.detach().cpu(),
        timesteps=torch.as_tensor(timesteps).cpu(),
        guidance_scale=guidance,
        inversion=inversion,
        seed=seed,
    )


@torch.no_grad()
def edit_generated(
    pipe,
    source_prompt: str,
    target_prompts: str | Sequence[str],
    edit: str = "replace",
    *,
    seed: int = 0,
    num_steps: int = 50,
    guidance_scale: float | None = None,
    negative_prompt: str = "",
    store_self_attention: bool = False,
    per_step_resolutions: Sequence[int] = (),
    progress: bool = True,
    source_cache=True,
    **edit_settings,
) -> EditResult:
    """Generate the source prompt from `seed` and edit it into every target prompt (one batch).

    edit_settings: PromptEdit's settings by name (cross_replace_steps, self_replace_steps, reweight, blend_words,
    blend_threshold, blend_mask_style, self_replace_max_resolution, attention_control), with PromptEdit's defaults;
    run_edit describes the sampling ones and `source_cache` (editing the same source again runs only the targets)."""
    prompt_edit = _prompt_edit(source_prompt, target_prompts, edit, edit_settings)
    return run_edit(
        pipe, prompt_edit, seed=seed, num_steps=num_steps, guidance_scale=guidance_scale,
        negative_prompt=negative_prompt, store_self_attention=store_self_attention,
        per_step_resolutions=per_step_resolutions, progress=progress, source_cache=source_cache,
    )


def edit_real(
    pipe,
    image_or_inversion,
    source_prompt: str | None = None,
    target_prompts: str | Sequence[str] | None = None,
    edit: str = "replace",
    *,
    inversion_method: str | None = None,
    num_steps: int | None = None,
    guidance_scale: float | None = None,
    store_self_attention: bool = False,
    per_step_resolutions: Sequence[int] = (),
    progress: bool = True,
    source_cache=True,
    **options,
) -> EditResult:
    """Edit a real image: invert it with the source prompt (null-text inversion by default), then run P2P from
    the inversion. The edit is checked BEFORE the (slow) inversion.

    options: PromptEdit's settings by name (as for edit_generated); the others go to inversion.invert.

    image_or_inversion: a path, PIL image or uint8 array of ONE image, or an Inversion (from
        inversion.invert, or a previous result.inversion) to reuse; then source_prompt defaults to its prompt.
    inversion_method: "null_text" (None: the default), "negative_prompt", "ddim", "fixed_point", "direct" or
        "edit_friendly" (inversion.invert; edit_friendly takes eta and seed as inversion_options);
        invert's options (e.g. inner_steps=5) are passed through. guidance_scale: None = the inversion's
        (7.5 for null-text); num_steps: steps of a new inversion (None: 50). A reused inversion keeps its own
        steps and settings: a different num_steps, or inversion options, raise EditError instead of being ignored.
    source_cache: as for run_edit; editing the same Inversion again runs only the targets. Unless it is False, a
        new image's inversion is kept too (inversion.cached_invert): editing the same image, source prompt and
        inversion settings again neither re-inverts nor recomputes the source branch.
    """
    from .inversion import Inversion, cached_invert, invert

    is_inversion = isinstance(image_or_inversion, Inversion)
    if source_prompt is None:
        if not is_inversion:
            raise EditError("give the source prompt: the text that describes the image as it is")
        source_prompt = image_or_inversion.prompts[0]
    if target_prompts is None:
        raise EditError("give at least one target prompt (target_prompts=['...'])")
    settings = {name: options.pop(name) for name in EDIT_SETTINGS if name in options}
    inversion_options = options
    prompt_edit = _prompt_edit(source_prompt, target_prompts, edit, settings)
    prompt_edit.check(pipe.tokenizer)
    if is_inversion:
        inversion = image_or_inversion
        _check_reuse(inversion, num_steps, inversion_method, inversion_options)
    else:
        num_steps = DEFAULT_REAL_EDIT_STEPS if num_steps is None else num_steps
        _check_steps(num_steps)
        inversion = (invert if source_cache is False or source_cache is None else cached_invert)(
            pipe, image_or_inversion, source_prompt, method=inversion_method or DEFAULT_REAL_EDIT_INVERSION,
            num_steps=num_steps,
            guidance_scale=guidance_scale, progress=progress, **inversion_options,
        )
    return run_edit(
        pipe, prompt_edit, inversion=inversion, guidance_scale=guidance_scale,
        store_self_attention=store_self_attention, per_step_resolutions=per_step_resolutions, progress=progress,
        source_cache=source_cache,
    )


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


DEFAULT_REAL_EDIT_STEPS = 50  # edit_real's inversion steps S when none are given
DEFAULT_REAL_EDIT_INVERSION = "null_text"  # and its inversion method


def _check_reuse(inversion, num_steps: int | None, inversion_method: str | None, inversion_options: dict) -> None:
    """A reused inversion fixes the steps and the method: refuse what would be silently ignored."""
    if num_steps is not None and num_steps != inversion.num_steps:
        raise EditError(
            f"this inversion has S = {inversion.num_steps} steps and an edit from it takes the same steps: leave "
            f"num_steps out, or invert again with num_steps={num_steps} (edit_real(pipe, image, ...) does)"
        )
    if inversion_options:
        raise EditError(
            f"{', '.join(sorted(inversion_options))} {'is an option' if len(inversion_options) == 1 else 'are options'} "
            f"of a new inversion (or not an edit setting at all), but this inversion is reused as it is: leave "
            f"{'it' if len(inversion_options) == 1 else 'them'} out, or invert the image again with "
            f"{'it' if len(inversion_options) == 1 else 'them'}"
        )
    if inversion_method is not None and inversion_method != inversion.method:
        raise EditError(
            f"inversion_method={inversion_method!r} asks for a new inversion, but this one is a {inversion.method!r} "
            "inversion reused as it is: leave inversion_method out, or pass the image to invert it again"
        )


def _source_cache(source_cache):
    """run_edit's source_cache: True -> the default cache, False/None -> none, or a SourceBranchCache."""
    if source_cache is True:
        return default_source_cache()
    if source_cache is False or source_cache is None:
        return None
    if not isinstance(source_cache, SourceBranchCache):
        raise TypeError(f"source_cache must be True, False or a SourceBranchCache, got {type(source_cache).__name__}")
    return source_cache


def _fingerprint(value) -> str | tuple | None:
    """A digest of a tensor (or a list of tensors) for a cache key; None stays None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        return tuple(_fingerprint(item) for item in value)
    tensor = value.detach().cpu().contiguous()
    digest = hashlib.sha1(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"{tuple(tensor.shape)}:{tensor.dtype}:{digest.hexdigest()}"


def source_branch_key(pipe, denoiser, x_T, timesteps, controller, *, eta, variance, noises, inversion) -> tuple | None:
    """Everything the source row of an edit depends on (a recorded SourceBranch's key), or None when it cannot be
    replayed (noise drawn at random per row: eta > 0 without recorded noise maps)."""
    if eta != 0 and noises is None:
        return None
    unet = denoiser.unet
    weights = tuple((p.data_ptr(), p._version) for p in unet.parameters())
    uncond = denoiser.uncond_embeddings if denoiser.uses_guidance else None
    return (
        id(unet), weights, str(unet.device), str(next(unet.parameters()).dtype),
        repr(sorted((k, str(v)) for k, v in pipe.scheduler.config.items())),
        _fingerprint(denoiser.text_embeddings[:1]), _fingerprint(uncond), float(denoiser.guidance_scale),
        _fingerprint(x_T), tuple(int(t) for t in timesteps), float(eta), variance, _fingerprint(noises),
        None if inversion is None or inversion.method != "direct" else _fingerprint(inversion.latents),
        controller.source_usage_key(len(timesteps), int(x_T.shape[-1])),
    )


# PromptEdit's settings besides its prompts and edit kind (edit_generated / edit_real keywords, manifest fields)
EDIT_SETTINGS = tuple(f.name for f in dataclasses.fields(PromptEdit) if f.name not in ("source_prompt", "target_prompts", "edit"))


def _prompt_edit(source_prompt, target_prompts, edit: str, settings: dict) -> PromptEdit:
    """PromptEdit from keyword settings; a misspelt setting is an EditError that lists the settings."""
    return PromptEdit.from_dict({"source_prompt": source_prompt, "target_prompts": target_prompts, "edit": edit,
                                 **settings})


def _roles(prompts: list[str]):
    yield "source prompt", prompts[0]
    for index, prompt in enumerate(prompts[1:], start=1):
        yield f"target prompt {index}", prompt


def _as_pair_if_list(value):
    return tuple(value) if isinstance(value, list) else value


def json_ready(value):
    """Tuples -> lists, recursively (what json.dumps and from_dict round-trip)."""
    if isinstance(value, dict):
        return {key: json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item) for item in value]
    return value


def _check_steps(num_steps: int) -> None:
    if isinstance(num_steps, bool) or int(num_steps) != num_steps or num_steps < 1:
        raise EditError(f"num_steps must be a positive integer, got {num_steps!r}")


def _check_inversion(pipe, inversion, source_prompt: str, guidance_scale: float | None) -> None:
    if inversion.batch_size != 1:
        raise EditError(
            f"this Inversion holds {inversion.batch_size} images; Prompt-to-Prompt edits one image at a time: "
            "invert the images one by one"
        )
    if inversion.latents.shape[2] != pipe.unet.config.in_channels:
        raise EditError(
            f"this Inversion has {inversion.latents.shape[2]}-channel latents but the UNet takes "
            f"{pipe.unet.config.in_channels}: it was made with another model ({inversion.model_name or 'unknown'!r})"
        )
    if inversion.prompts and inversion.prompts[0] != source_prompt:
        warnings.warn(
            f"the inversion was made with the prompt {inversion.prompts[0]!r} but the source prompt is "
            f"{source_prompt!r}: the source will not reconstruct faithfully (invert with the source prompt)",
            UserWarning,
            stacklevel=3,
        )
    # direct inversion rectifies the source at any guidance
    if guidance_scale is not None and inversion.method not in ("ddim", "direct") and float(guidance_scale) != inversion.guidance_scale:
        warnings.warn(
            f"the {inversion.method} inversion was made for guidance {inversion.guidance_scale}, the edit samples at "
            f"{guidance_scale}: the source will not reconstruct faithfully",
            UserWarning,
            stacklevel=3,
        )
