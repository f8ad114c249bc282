"""Inversion: find the latent trajectory z_T -> ... -> z_0 that the sampler would follow to produce a GIVEN image.

Editing a real image needs its "noise": the z_T (and, for guided sampling, more) from which sampling with the
source prompt gives the image back. Then a new prompt, or Prompt-to-Prompt's attention control, changes what the
same sampling produces. Six methods, all built on the same sampling step (posterior.py) and sampler (sampling.py):

    ddim             DDIM inversion: the deterministic (eta = 0) DDIM step run backwards (step.py), using
                     eps_hat(z_{t-1}, t) in place of the unknown eps_hat(z_t, t) (fixed_point.invert_latents).
    null_text        Null-text inversion (Mokady et al. 2022): a w = 1 DDIM pivot, then the unconditional embedding
                     optimised step by step so that sampling at w lands back on it (null_text.py).
    negative_prompt  Negative-prompt inversion (Miyake et al. 2023): the w = 1 pivot, sampled with the SOURCE
                     prompt's embedding as the unconditional one, so guidance changes nothing for the source.
    fixed_point      Fixed-point inversion (ReNoise / AIDI): the exact inverse of each step by iterating the noise
                     prediction at the current estimate of z_t, Anderson-accelerated (fixed_point.py).
    direct           Direct inversion (PnP Inversion, Ju et al. 2024): the w = 1 pivot, onto which sampling at w
                     puts the source branch back after every step (direct.py).
    edit_friendly    Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024), for eta > 0: x_t drawn
                     independently from q(x_t | x_0), the noise map of each stochastic step recorded (edit_friendly.py).

Files, bottom-up: methods.py (names, edit-friendly's default eta; the default guidance per method is a per-model
default, models.defaults.inversion_guidance), step.py (the inversion step), model.py (what
inversion needs from a model), fixed_point.py, null_text.py, direct.py, edit_friendly.py (one method each, on
latents), latent_level.py (`invert_with_model` / `reconstruct_with_model`: every method for any ConditionalModel,
e.g. the exact `ClosedFormDenoiser` in pixel space, no VAE), result.py (`Inversion`, saved as safetensors + JSON),
pipeline_level.py (`invert` and `reconstruct`: images and prompts in, with any Stable-Diffusion-architecture
pipeline), cache.py (`cached_invert`: each image, prompt and settings inverted once per process).

Trajectories are stored in SAMPLING order, like `SamplingResult.trajectory`: latents[0] = z_T is the input of
sampling step 0, latents[i] the input of step i, latents[-1] = z_0 the encoded image.
"""

from .cache import InversionCache, cached_invert, default_inversion_cache
from .direct import rectify_source_branch, source_rectifier
from .edit_friendly import NoiseSpace, edit_friendly_noise_space
from .fixed_point import FixedPointSettings, LatentTrajectory, anderson_extrapolation, invert_latents
from .latent_level import LatentInversion, invert_with_model, reconstruct_with_model
from .methods import DEFAULT_ETA, METHODS
from .model import ConditionalModel, StepwiseGuidedDenoiser
from .null_text import NULL_TEXT_PRESETS, NullTextResult, NullTextSettings, optimize_null_text
from .pipeline_level import inversion_inputs, invert, null_text_settings_for, pipeline_name, reconstruct
from .result import FORMAT_VERSION, Inversion
from .step import ETA_ERROR, check_eta, ddim_inversion_step

__all__ = [
    "ConditionalModel", "DEFAULT_ETA", "ETA_ERROR", "FORMAT_VERSION", "FixedPointSettings",
    "Inversion", "InversionCache", "LatentInversion", "LatentTrajectory", "METHODS", "NULL_TEXT_PRESETS", "NoiseSpace", "NullTextResult", "NullTextSettings",
    "StepwiseGuidedDenoiser", "anderson_extrapolation", "cached_invert", "check_eta", "default_inversion_cache", "ddim_inversion_step",
    "edit_friendly_noise_space", "invert", "invert_latents", "invert_with_model", "inversion_inputs", "null_text_settings_for",
    "optimize_null_text", "pipeline_name", "reconstruct", "reconstruct_with_model", "rectify_source_branch",
    "source_rectifier",
]
