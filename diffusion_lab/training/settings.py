"""TrainingSettings: every setting of a shapes-tiny training run; pipelines/train_shapes_tiny.py makes a flag of each."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class TrainingSettings:
    run_dir: str = "train_runs/shapes-tiny"
    export_dir: Optional[str] = None  # diffusers folder written with the EMA weights
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    # VAE
    vae_steps: int = 4000
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # VAE decoder fine-tuning with the encoder frozen: sharper images, same latent space (the UNet stays valid)
    decoder_steps: int = 0
    decoder_lr: float = 5e-4
    # VAE locality fine-tuning (finetune_vae_locality): the whole VAE, then the UNet must follow
    locality_steps: int = 0
    locality_batch_size: int = 16  # pairs
    locality_lr: float = 2e-4
    locality_weight: float = 1.0
    paste_weight: float = 1.0
    anchor_weight: float = 0.01
    # UNet + text encoder
    num_scenes: int = 30000
    unet_steps: int = 9000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    offset_noise: float = 0.1
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    attribute_dropout: float = 0.1
    position_caption_rate: float = 0.0  # share of captions that name each object's grid cell ("at the top left")
    ema_decay: float = 0.999
    # --stage seed: grow the exported text encoder to this many transformer layers (grow_text_encoder; 0: keep its layers)
    text_layers: int = 0
    # learning rate of the text encoder's transformer layers relative to --lr (a layer grown from zero learns slowly)
    text_layer_lr_scale: float = 1.0
    grounding_weight: float = 0.0  # > 0: add the token grounding loss of the cross-attention maps (see grounding_loss)
    # >= 0: position words ("top", "left", ...) get a grounding term of their own with this weight, the other words
    # keep grounding_weight; < 0: position words are grounded with the other words (one term, grounding_weight)
    position_grounding_weight: float = -1.0
    grounding_max_timestep: int = 1000  # ground only the noise levels t < this (layout is unknowable from pure noise)
    checkpoint_every: int = 250
    export_every: int = 500
    # > 0: also keep a copy of each of the last N exports in <run_dir>/exports/step-NNNNNN (to compare or ship an
    # earlier step when a later one regresses); 0: only the latest export exists
    export_keep: int = 0
    eval_every: int = 1000
    eval_samples: int = 64
    log_every: int = 50
    max_minutes: float = 0.0  # > 0: stop the UNet stage (with a checkpoint) after this much wall time
    data_workers: int = 0  # > 0: build the UNet stage's batches in this many worker processes (TrainingBatches)
    progress: bool = True
    extra: dict = field(default_factory=dict)
