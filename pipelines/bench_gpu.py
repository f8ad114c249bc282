"""Benchmark the GPU path: SD-1.5 and SDXL architectures with random weights, timed end to end.

    python pipelines/bench_gpu.py                       # CUDA, fp16, full-size: SD-1.5 at 512 px, SDXL at 1024 px
    python pipelines/bench_gpu.py --tiny --steps 3      # CPU, fp32, the tiny random pipelines (CI)
        [--models sd15 sdxl] [--steps 50] [--inner-steps 10] [--repeats 1] [--out outputs/bench_gpu]

Random weights are enough for speed and memory: the arithmetic of a UNet call does not depend on the values (no
download, no licence). Full-size pipelines are built from the published configs (UNet, VAE, CLIP ViT-L text encoder
and, for SDXL, OpenCLIP bigG with projection; `full_size_components` -- their parameter counts are tested against
the released checkpoints') directly on the device; the tokenizer is the tiny CLIP BPE one with SD's 77 positions
(tokenisation time is negligible). Null-text inversion with random weights rarely stops early, so its time is the
paper's worst case: every one of the `inner_steps` Adam steps at every timestep.

Per model, after one warm-up of each measurement (kernels, allocator; 3 steps where the measured run's steps are
a parameter), the seconds of:
    sample          one 50-step DDIM sample at guidance 7.5 (text encoding, sampling, VAE decode)
    null-text       one null-text inversion of a 1-image batch (VAE encode, 50 DDIM inversion steps at w = 1,
                    50 x inner_steps Adam steps; the paper: ~60 s on an A100 at 512 px)
    P2P edit        one Prompt-to-Prompt replace edit of a generated image (batch of source + target, 50 steps)
    edit (reuse)    one P2P edit of a real image from an existing inversion (no inversion: the null-text one above)
and the peak memory: torch.cuda.max_memory_allocated on CUDA (per model), the process's peak resident set on a CPU.
Writes results.md / results.json to --out and prints the table.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from diffusion_lab.editing import edit_generated, edit_real  # noqa: E402
from diffusion_lab.generation import text_to_image  # noqa: E402
from diffusion_lab.inversion import invert  # noqa: E402
from diffusion_lab.latents import image_size  # noqa: E402
from diffusion_lab.models.loading import synchronize  # noqa: E402
from diffusion_lab.shapes import random_scene, render  # noqa: E402

MODELS = ("sd15", "sdxl")
SOURCE, TARGET = "a photo of a red circle on a gray background", "a photo of a blue circle on a gray background"
VOCAB_SIZE = 49408  # CLIP's
TOKENS = 77  # CLIP's positions


# ----------------------------------------------------------------------------------------------------------------
# Full-size configs (the released checkpoints' config.json values that differ from the diffusers defaults)
# ----------------------------------------------------------------------------------------------------------------

SD15_UNET = dict(sample_size=64, cross_attention_dim=768)  # the rest: UNet2DConditionModel's defaults = SD 1.5
SDXL_UNET = dict(
    sample_size=128,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    transformer_layers_per_block=(1, 2, 10),
    attention_head_dim=(5, 10, 20),
    cross_attention_dim=2048,
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,  # 1280 pooled + 6 x 256 time ids
)
VAE = dict(
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
)
CLIP_L = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              projection_dim=768, hidden_act="quick_gelu")
OPEN_CLIP_BIG_G = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
                       projection_dim=1280, hidden_act="gelu")


def full_size_components(model: str) -> dict:
    """The nn.Modules of a full-size pipeline, randomly initialised on the CURRENT default device (use
    `with torch.device(...)`: "meta" to count parameters without memory)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def text(settings):
        return CLIPTextConfig(vocab_size=VOCAB_SIZE, max_position_embeddings=TOKENS, **settings)

    if model == "sd15":
        return {
            "unet": UNet2DConditionModel(**SD15_UNET),
            "vae": AutoencoderKL(**VAE, sample_size=512, scaling_factor=0.18215),
            "text_encoder": CLIPTextModel(text(CLIP_L)),
        }
    if model == "sdxl":
        return {
            "unet": UNet2DConditionModel(**SDXL_UNET),
            "vae": AutoencoderKL(**VAE, sample_size=1024, scaling_factor=0.13025),
            "text_encoder": CLIPTextModel(text(CLIP_L)),
            "text_encoder_2": CLIPTextModelWithProjection(text(OPEN_CLIP_BIG_G)),
        }
    raise ValueError(f"model must be one of {MODELS}, got {model!r}")


def _scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


def build_full_size_pipeline(model: str, device: str, dtype: torch.dtype, seed: int = 0):
    """A full-size random-weight StableDiffusionPipeline / StableDiffusionXLPipeline on `device` in `dtype`."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from diffusion_lab.models.tiny_random import build_tiny_tokenizer

    torch.manual_seed(seed)
    with torch.device(device):
        components = full_size_components(model)
    for module in components.values():
        module.to(dtype).eval().requires_grad_(False)
    tokenizer = build_tiny_tokenizer(TOKENS)
    if model == "sd15":
        pipe = StableDiffusionPipeline(**components, tokenizer=tokenizer, scheduler=_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        pipe = StableDiffusionXLPipeline(**components, tokenizer=tokenizer, tokenizer_2=build_tiny_tokenizer(TOKENS),
                                         scheduler=_scheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(model: str):
    """The tiny random pipelines of the tests (CPU, fp32)."""
    from diffusion_lab.models.tiny_random import build_tiny_random_pipeline, build_tiny_random_sdxl_pipeline

    pipe = build_tiny_random_pipeline(seed=0) if model == "sd15" else build_tiny_random_sdxl_pipeline(seed=0)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        module = getattr(pipe, name, None)
        if module is not None:
            module.requires_grad_(False)
    return pipe


# ----------------------------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------------------------


def timed(function, device, repeats: int, warm_up=None) -> tuple[float, object]:
    """Median seconds of `repeats` calls after one warm-up call (`warm_up`, default `function`: a short run with
    the same shapes warms the kernels and the allocator as well as a full one), and the last result."""
    result = (warm_up or function)()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        result = function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return float(np.median(times)), result


def peak_memory_gib(device: str) -> float:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return peak / 2**20


def benchmark(pipe, device: str, steps: int, inner_steps: int, repeats: int) -> dict:
    image = render(random_scene(0, num_objects=1), size=image_size(pipe)).image
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = {"resolution": image_size(pipe), "dtype": str(pipe.unet.dtype).replace("torch.", ""), "steps": steps,
           "inner_steps": inner_steps}
    few = min(steps, 3)  # warm-up runs: the same shapes, fewer steps
    row["sample_s"], _ = timed(lambda: text_to_image(pipe, [SOURCE], num_steps=steps, guidance_scale=7.5,
                                                     progress=False), device, repeats)
    row["null_text_s"], inversion = timed(
        lambda: invert(pipe, image, SOURCE, "null_text", num_steps=steps, inner_steps=inner_steps, progress=False),
        device, repeats,
        warm_up=lambda: invert(pipe, image, SOURCE, "null_text", num_steps=few, inner_steps=2, progress=False))
    row["null_text_inner_steps_run"] = int((~torch.isnan(inversion.diagnostics["null_text_losses"])).sum())
    row["p2p_edit_s"], _ = timed(lambda: edit_generated(pipe, SOURCE, [TARGET], num_steps=steps, progress=False),
                                 device, repeats,
                                 warm_up=lambda: edit_generated(pipe, SOURCE, [TARGET], num_steps=few, progress=False))
    row["edit_reusing_inversion_s"], _ = timed(lambda: edit_real(pipe, inversion, target_prompts=[TARGET],
                                                                 progress=False), device, repeats)
    row["peak_memory_gib"] = peak_memory_gib(device)
    return row


def markdown(rows: dict, header: str) -> str:
    lines = [header, "", "| model | px | dtype | S | sample (s) | null-text inversion (s) | P2P edit (s) | "
             "edit reusing an inversion (s) | peak memory (GiB) |", "|---|---|---|---|---|---|---|---|---|"]
    for model, r in rows.items():
        lines.append(f"| {model} | {r['resolution']} | {r['dtype']} | {r['steps']} | {r['sample_s']:.3f} | "
                     f"{r['null_text_s']:.3f} ({r['null_text_inner_steps_run']} Adam steps) | {r['p2p_edit_s']:.3f} | "
                     f"{r['edit_reusing_inversion_s']:.3f} | {r['peak_memory_gib']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="the tiny random pipelines on the CPU in fp32 (CI)")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--inner-steps", type=int, default=10, help="null-text Adam steps per timestep (paper: 10)")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up (median)")
    parser.add_argument("--device", default=None, help="default: cuda (full size) / cpu (--tiny)")
    parser.add_argument("--dtype", default=None, help="default: float16 on CUDA, float32 otherwise")
    parser.add_argument("--out", default="outputs/bench_gpu")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.tiny else "cuda")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run the full-size benchmark on a GPU, or --tiny on the CPU")
    dtype = {"float16": torch.float16, "fp16": torch.float16, "float32": torch.float32, "bfloat16": torch.bfloat16}[
        args.dtype or ("float16" if torch.device(device).type == "cuda" else "float32")]
    if args.tiny and dtype != torch.float32:
        raise SystemExit("--tiny runs in float32 on the CPU")
    rows = {}
    for model in args.models:
        print(f"building {model} ({'tiny' if args.tiny else 'full size'}, {device}, {dtype})", flush=True)
        pipe = build_tiny_pipeline(model) if args.tiny else build_full_size_pipeline(model, device, dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "the UNet runs in float16": expected here
            rows[model] = benchmark(pipe, device, args.steps, args.inner_steps, args.repeats)
        print(json.dumps({model: rows[model]}), flush=True)
        del pipe
        if torch.device(device).type == "cuda":
            torch.cuda.empty_cache()
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    header = (f"bench_gpu on {name}: {'tiny random pipelines' if args.tiny else 'full-size random-weight pipelines'}, "
              f"seconds per run (median of {args.repeats} after a warm-up), guidance 7.5")
    table = markdown(rows, header)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps({"device": name, "tiny": args.tiny, "rows": rows}, indent=2) + "\n")
    print(table)
    return rows


if __name__ == "__main__":
    os.environ.setdefault("DIFFUSION_LAB_NO_PROGRESS", "1")
    main()
