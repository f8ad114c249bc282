"""shapes-tiny: the built-in text-to-image model, a genuine diffusers StableDiffusionPipeline.

The same classes as Stable Diffusion 1.x (AutoencoderKL, UNet2DConditionModel, CLIPTextModel,
a tokenizer, DDIMScheduler), only small, and trained by `pipelines/train_shapes_tiny.py` on the
shapes world. Everything written against it runs unchanged on real checkpoints.

This file holds the architecture (configs) and the word-level tokenizer; the weights live in
`diffusion_lab/models/shapes-tiny/` in diffusers format (safetensors only).
"""

from __future__ import annotations

from pathlib import Path

from ..shapes.captions import vocabulary

MODEL_DIR = Path(__file__).parent / "shapes-tiny"
IMAGE_SIZE = 64
LATENT_SIZE = 16
MAX_TOKENS = 32  # bos + the longest caption (3 objects with positions and background: 30 words) + eos
SPECIAL_TOKENS = {"bos": "<|startoftext|>", "eos": "<|endoftext|>", "pad": "<|pad|>", "unk": "<|unk|>"}

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    block_out_channels=(16, 32, 32),  # 3 blocks: downsampling factor 4, 64x64 -> 16x16
    layers_per_block=1,
    latent_channels=4,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
)

TEXT_ENCODER_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=0,  # token + position embeddings only: words stay distinct (sharper cross-attention)
    # (build_untrained_pipeline(text_layers=N) overrides it; a layer is then 2 heads of width 32 and an MLP of 128)
    num_attention_heads=2,
    max_position_embeddings=MAX_TOKENS,
    projection_dim=64,
)

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),  # 16x16, 8x8, 4x4
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(32, 64, 128),
    layers_per_block=1,
    cross_attention_dim=64,
    attention_head_dim=2,  # diffusers' legacy name: the number of heads
    norm_num_groups=16,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    timestep_spacing="leading",
)


def build_tokenizer():
    """A word-level PreTrainedTokenizerFast over the shapes vocabulary (bos, eos, pad, unk added)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [SPECIAL_TOKENS[k] for k in ("pad", "bos", "eos", "unk")]
    vocab = {token: i for i, token in enumerate(specials + vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    bos, eos = SPECIAL_TOKENS["bos"], SPECIAL_TOKENS["eos"]
    core.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}", special_tokens=[(bos, vocab[bos]), (eos, vocab[eos])]
    )
    from tokenizers import normalizers

    core.normalizer = normalizers.Lowercase()
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=bos,
        eos_token=eos,
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        model_max_length=MAX_TOKENS,
    )


def build_untrained_pipeline(seed: int = 0, text_layers: int = 0):
    """The shapes-tiny architecture with random weights (what training starts from).

    text_layers: the number of (causal, pre-LayerNorm) CLIP transformer layers of the text encoder. The
    shipped model has none, so every word is embedded without context; a run grown by
    `training.grow_text_encoder` has more, and its pipeline must be built with as many to load its weights
    (`training.build_run_pipeline` reads the count from the run folder)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tokenizer = build_tokenizer()
    torch.manual_seed(seed)
    vae = AutoencoderKL(**VAE_CONFIG)
    text_config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **{**TEXT_ENCODER_CONFIG, "num_hidden_layers": text_layers},
    )
    text_encoder = CLIPTextModel(text_config)
    unet = UNet2DConditionModel(**UNET_CONFIG)
    scheduler = DDIMScheduler(**SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.diffusion_lab_family = "shapes-tiny"  # models.defaults.model_family: its defaults are shapes-tiny's
    return pipe
