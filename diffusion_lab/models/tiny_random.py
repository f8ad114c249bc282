"""A tiny, randomly initialised Stable Diffusion pipeline, built from configs (no download).

It has the real architecture of Stable Diffusion 1.x/2.x (AutoencoderKL, UNet2DConditionModel with
cross-attention at two resolutions, CLIPTextModel, a CLIP byte-level BPE tokenizer, DDIMScheduler
configured like SD), only with a few channels, so that tests of the editing machinery
(DDIM, inversion, Prompt-to-Prompt attention control) run in milliseconds on a CPU.
Its images are noise: use it to test code paths, never to judge quality.

    pipe = build_tiny_random_pipeline(seed=0)
    pipe.tokenizer.tokenize("a tiger")   # ['a</w>', 'ti', 'ger</w>']: a word split into two tokens

The tokenizer is a genuine `transformers.CLIPTokenizer` loaded from a small generated
vocab.json + merges.txt. Its merges make the common words of the lectures and of the shapes world
single tokens, while a few words ("tiger", "butterfly", "bicycle", "spikey") are split into
several tokens, like rare words are in the real CLIP vocabulary. Any other text still tokenizes,
letter by letter (byte-level BPE has no unknown token). `model_max_length` is small (16) so that
"prompt longer than the tokenizer allows" is cheap to test.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch

MAX_TOKENS = 16  # the tokenizer's model_max_length and the text encoder's number of positions
LATENT_CHANNELS = 4

# Words that become one token each.
WHOLE_WORDS = (
    "a an the of on in at with and photo image picture big small large tiny "
    "red green blue yellow orange purple white black gray grey "
    "circle square triangle star cross shape background top bottom left right center "
    "cat dog lion couch riding flower house hotel tent car tree mountain flag"
).split()
# Words split into several tokens (the pieces, in order).
SPLIT_WORDS = {
    "tiger": ("ti", "ger"),
    "butterfly": ("butter", "fly"),
    "bicycle": ("bi", "cycle"),
    "spikey": ("spik", "ey"),
}
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
END_OF_WORD = "</w>"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in characters)))


def _apply_bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """CLIP's BPE: repeatedly merge the adjacent pair with the lowest rank."""
    symbols = list(symbols)
    while len(symbols) > 1:
        pairs = [(ranks.get(pair, float("inf")), i) for i, pair in enumerate(zip(symbols, symbols[1:]))]
        best_rank, best_index = min(pairs)
        if best_rank == float("inf"):
            break
        first, second = symbols[best_index], symbols[best_index + 1]
        merged, i = [], 0
        while i < len(symbols):
            if i < len(symbols) - 1 and symbols[i] == first and symbols[i + 1] == second:
                merged.append(first + second)
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return symbols


def _word_symbols(word: str) -> list[str]:
    """A word as CLIP's BPE starts from it: its characters, the last one marked end-of-word."""
    return list(word[:-1]) + [word[-1] + END_OF_WORD]


def _target_pieces(word: str) -> list[str]:
    pieces = list(SPLIT_WORDS.get(word, (word,)))
    pieces[-1] += END_OF_WORD
    return pieces


def generate_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary whose merges produce exactly the pieces listed above.

    For each word, merges are added (at the lowest priority) joining the symbols BPE currently
    produces, left to right, never across the boundary of two intended pieces.
    """
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in list(WHOLE_WORDS) + list(SPLIT_WORDS):
        pieces = _target_pieces(word)
        boundaries, position = set(), 0
        for piece in pieces[:-1]:
            position += len(piece)
            boundaries.add(position)
        while True:
            symbols = _apply_bpe(_word_symbols(word), ranks)
            if symbols == pieces:
                break
            position, added = 0, False
            for left, right in zip(symbols, symbols[1:]):
                position += len(left)
                if position not in boundaries:  # joining left+right stays inside one piece
                    ranks[(left, right)] = len(merges)
                    merges.append((left, right))
                    added = True
                    break
            if not added:
                raise RuntimeError(f"cannot build the BPE pieces {pieces} of {word!r}")  # pragma: no cover
    characters = list(_bytes_to_unicode().values())
    tokens = characters + [c + END_OF_WORD for c in characters] + ["".join(m) for m in merges] + [BOS, EOS]
    return {token: index for index, token in enumerate(tokens)}, merges


def build_tiny_tokenizer(model_max_length: int = MAX_TOKENS):
    """A real CLIPTokenizer loaded offline from a generated vocab.json + merges.txt."""
    from transformers import CLIPTokenizer

    vocab, merges = generate_vocab_and_merges()
    with tempfile.TemporaryDirectory() as directory:
        Path(directory, "vocab.json").write_text(json.dumps(vocab))
        merges_text = "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges)
        Path(directory, "merges.txt").write_text(merges_text)
        tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=model_max_length)
    # Self-check: the generated merges must give the intended pieces in the real tokenizer too.
    for word in list(WHOLE_WORDS) + list(SPLIT_WORDS):
        pieces = tokenizer.tokenize(word)
        if pieces != _target_pieces(word):  # pragma: no cover - guards the generator above
            raise RuntimeError(f"tiny tokenizer splits {word!r} into {pieces}, expected {_target_pieces(word)}")
    return tokenizer


def _tiny_vae(sample_size: int, **config):
    """The tiny AutoencoderKL of both tiny pipelines: 2 blocks, downsampling factor 2, latents of `sample_size`."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=4,
        sample_size=2 * sample_size,
        **config,
    )


def build_tiny_random_pipeline(
    seed: int = 0,
    prediction_type: str = "epsilon",
    sample_size: int = 16,
    cross_attention_dim: int = 32,
    tokenizer: str = "bpe",
):
    """A randomly initialised StableDiffusionPipeline of the real SD architecture, tiny and fast.

    Args:
        seed: weights are a deterministic function of the seed (the global RNG is left untouched).
        prediction_type: "epsilon" (SD 1.x) or "v_prediction" (SD 2.x style).
        sample_size: the latent side; images are twice as large (the VAE downsamples by 2).
        cross_attention_dim: width of the text embeddings (the text encoder's hidden size).
        tokenizer: "bpe" (CLIP byte-level BPE; some words span several tokens) is the only kind.

    Cross-attention layers sit at two resolutions: sample_size (down block 0, up block 1) and
    sample_size / 2 (down block 1, mid block, up block 0).
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    if tokenizer != "bpe":
        raise ValueError(f"tokenizer must be 'bpe' (a CLIP BPE tokenizer), got {tokenizer!r}")
    if sample_size % 2:
        raise ValueError(f"sample_size must be even (the UNet downsamples once), got {sample_size}")

    clip_tokenizer = build_tiny_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(clip_tokenizer),
                hidden_size=cross_attention_dim,
                intermediate_size=2 * cross_attention_dim,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=clip_tokenizer.model_max_length,
                bos_token_id=clip_tokenizer.bos_token_id,
                eos_token_id=clip_tokenizer.eos_token_id,
                pad_token_id=clip_tokenizer.pad_token_id,
                projection_dim=cross_attention_dim,
            )
        )
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),  # side s, then s/2
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),  # side s/2, then s
            block_out_channels=(32, 64),
            layers_per_block=1,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=2,  # diffusers' legacy name: the number of heads
            norm_num_groups=8,
        )
        vae = _tiny_vae(sample_size)
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        timestep_spacing="leading",
    )
    pipeline = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_tiny_random_sdxl_pipeline(seed: int = 0, prediction_type: str = "epsilon", sample_size: int = 16):
    """A randomly initialised StableDiffusionXLPipeline of the real SDXL architecture, tiny and fast (no download).

    Like SDXL (Podell et al. 2023, arXiv:2307.01952): two text encoders, a CLIPTextModel and a
    CLIPTextModelWithProjection (hidden size 32 each), whose penultimate layers are concatenated into the
    cross-attention context (width 64) and whose second one's projected pooled embedding, with the six "time ids"
    (original size, crop, target size), is added to the timestep embedding (addition_embed_type "text_time",
    projection_class_embeddings_input_dim = 32 + 6 x 8). The UNet starts with a block WITHOUT attention (as SDXL's
    does) and has two transformer layers per attention block at side sample_size / 2 (SDXL: 2 and 10), where all
    its cross-attention lives (down block 1, mid block, up block 0). Both tokenizers are the tiny CLIP BPE one of
    `build_tiny_tokenizer`. The scheduler is DDIM with SDXL's schedule (that of SD 1.x: scaled_linear
    0.00085..0.012, "leading", steps_offset 1). Its images are noise: use it to test code paths, never quality.
    """
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if prediction_type not in ("epsilon", "v_prediction"):
        raise ValueError(f"prediction_type must be 'epsilon' or 'v_prediction', got {prediction_type!r}")
    if sample_size % 2:
        raise ValueError(f"sample_size must be even (the UNet downsamples once), got {sample_size}")
    tokenizer = build_tiny_tokenizer()
    hidden, time_embed_dim = 32, 8

    def text_config():
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
            num_attention_heads=2, max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, projection_dim=hidden, hidden_act="gelu",
        )

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(text_config())
        text_encoder_2 = CLIPTextModelWithProjection(text_config())
        unet = UNet2DConditionModel(
            sample_size=sample_size,
            in_channels=LATENT_CHANNELS,
            out_channels=LATENT_CHANNELS,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),  # side s (no attention), then s/2
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            transformer_layers_per_block=(1, 2),
            attention_head_dim=(2, 4),
            use_linear_projection=True,
            cross_attention_dim=2 * hidden,  # the two encoders' token embeddings, concatenated
            addition_embed_type="text_time",
            addition_time_embed_dim=time_embed_dim,
            projection_class_embeddings_input_dim=hidden + 6 * time_embed_dim,  # pooled + 6 time ids
            norm_num_groups=8,
        )
        vae = _tiny_vae(sample_size, scaling_factor=0.13025)  # SDXL's scaling factor
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type=prediction_type, clip_sample=False, set_alpha_to_one=False, steps_offset=1,
        timestep_spacing="leading",
    )
    pipeline = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=build_tiny_tokenizer(), unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
    )
    pipeline.set_progress_bar_config(disable=True)
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2):
        module.eval()
    return pipeline
