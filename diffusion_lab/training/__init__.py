"""Training shapes-tiny: a VAE on renders, then the UNet and text encoder on cached latents.

Recipe (see the model card for the measured effect of each choice):
- VAE: MSE + L1 reconstruction with a tiny KL weight, so latents are nearly deterministic; the UNet
  is trained on `latent_dist.mean` (cached once), scaled by `vae.config.scaling_factor` = 1 / std.
- UNet: epsilon prediction on the Stable Diffusion schedule (scaled_linear, 1000 steps), as DDPM
  (Ho et al. 2020) with
  - offset noise 0.1 (the background colour otherwise leaks from x_T, whose SNR is not zero),
  - min-SNR-gamma loss weighting, gamma = 5 (Hang et al. 2023, arXiv:2303.09556), which speeds up
    convergence by not over-weighting the low-noise steps,
  - 10% empty captions, so classifier-free guidance (Ho & Salimans 2022) works,
  - EMA of the weights (decay 0.999); the EMA weights are what ships,
  - optionally (grounding_weight > 0) a token grounding loss on the cross-attention maps, as in
    TokenCompose (Wang et al. 2024, arXiv:2312.03626): the renderer knows where every object is, so
    each attribute word is told to put its attention on its own object (and the background colour
    word on the background). Prompt-to-Prompt then finds the layout in the maps of every layer.
Text encoder: shipped with no transformer layer (each word embedded without context); a seeded run can be
grown by identity-initialised causal layers (grow_text_encoder), and its layer count is read from its weights.
Checkpoints are safetensors (weights) plus a weights_only torch file (optimizer state) in a run
folder, so training resumes exactly; `export_pipeline` writes the diffusers folder atomically.

The package, bottom-up (each file imports only files before it; ARCHITECTURE.md describes each):
settings (TrainingSettings), run_folder (log, atomic writes), data (scenes, renders, captions), vae, locality,
text_encoder, grounding, batches (the UNet stage's cached latents and batches), ema, evaluation, export, unet.
"""

from .settings import TrainingSettings
from .data import images_to_tensor, make_dataset, tokenize, training_captions, training_scenes
from .vae import finetune_vae_decoder, train_vae, vae_psnr
from .locality import dilate_cells, finetune_vae_locality, locality_losses, locality_pairs
from .text_encoder import TEXT_LAYER_PREFIX, build_run_pipeline, grow_text_encoder, text_layers_of_run
from .grounding import (
    BACKGROUND_WORD,
    OBJECT_WORD,
    POSITION_WORD,
    CrossAttentionRecorder,
    grounding_loss,
    object_coverage,
    word_regions,
)
from .batches import TrainingBatches, encode_dataset, encoder_fingerprint, training_batch_loader, training_data
from .ema import ExponentialMovingAverage
from .evaluation import evaluate_one_object, one_object_accuracy
from .export import export_from_run, export_pipeline, keep_export_copy, run_training_info, seed_run_from_export
from .unet import min_snr_weights, train_unet
