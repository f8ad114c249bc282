"""Measure sampling speed: a 50-step DDIM sample with guidance at batch 1, per UNet mode and CPU convolution backend.

    python pipelines/bench_speed.py [--model shapes-tiny] [--runs 7] [--threads 2] [--sd-sides 16 32 64]

For the traced UNet (diffusion_lab/runtime/traced_unet.py: what plain sampling on a CPU uses) and the eager one, and for
each CPU convolution backend (auto = what diffusion-lab picks, onednn = PyTorch's default, native = PyTorch's own
kernels; see diffusion_lab/runtime/convolution_backend.py) it times `text_to_image`: the first sample (which pays for the
trace) and the median of --runs later ones, with the time of one UNet call and of the VAE decode. --sd-sides
also times one forward of a Stable Diffusion 1.x-sized UNet
(random weights, batch 2 = one guided step) at those latent sides, which is what decides the threshold for real
checkpoints (slow on a CPU: about a minute per side). Run it on an idle machine. Writes the table to --out.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from diffusion_lab import load_pipeline
from diffusion_lab.runtime import CALLS_BEFORE_TRACING, CONVOLUTION_CHOICES, convolution_backend, forget_traces
from diffusion_lab.generation import initial_noise, text_to_image
from diffusion_lab.latents import decode_latents
from diffusion_lab.text import encode_prompts

PROMPT = "a large red circle on a gray background"


def _median_seconds(fn, runs: int, warm_up: int = 1) -> float:
    for _ in range(warm_up):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_backend(pipe, backend: str, traced: bool, runs: int, steps: int, guidance: float) -> dict:
    """Seconds of the first sample (tracing included) and the median of later ones, median ms of one guided
    UNet call (batch 2) and of one VAE decode, with CPU convolutions `backend` and the traced UNet on or off."""
    os.environ["DIFFUSION_LAB_CPU_CONVOLUTIONS"] = backend
    os.environ["DIFFUSION_LAB_TRACED_UNET"] = "1" if traced else "0"
    from diffusion_lab.denoisers import TextConditionedDenoiser

    forget_traces(pipe.unet)  # the first sample pays for its trace
    x_T = initial_noise(pipe, 1, 0)
    denoiser = TextConditionedDenoiser(pipe.unet, encode_prompts(pipe, [PROMPT]), encode_prompts(pipe, [""]), guidance)
    generate = lambda: text_to_image(pipe, [PROMPT], num_steps=steps, guidance_scale=guidance, progress=False)  # noqa: E731
    with torch.inference_mode():
        start = time.perf_counter()
        generate()
        first = time.perf_counter() - start
        sample = _median_seconds(generate, runs, warm_up=0)
        unet = _median_seconds(lambda: denoiser(x_T, 500, 0), runs * 5, warm_up=CALLS_BEFORE_TRACING + 1)
        decode = _median_seconds(lambda: decode_latents(pipe, x_T), runs * 5)
    return {"first_s": first, "sample_s": sample, "unet_ms": 1000 * unet, "decode_ms": 1000 * decode}


_SD_UNET: dict = {}


def time_sd_sized_unet(side: int, backend: str) -> float:
    """Seconds of one forward of an SD 1.x-sized UNet2DConditionModel (random weights) at batch 2."""
    from diffusers import UNet2DConditionModel

    if side not in _SD_UNET:
        _SD_UNET.clear()
        _SD_UNET[side] = UNet2DConditionModel(cross_attention_dim=768).eval()
    unet = _SD_UNET[side]
    x, text = torch.randn(2, 4, side, side), torch.randn(2, 77, 768)

    def forward():
        with convolution_backend(x, backend):
            unet(x, 500, encoder_hidden_states=text)

    with torch.inference_mode():
        return _median_seconds(forward, 2)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: PyTorch's default)")
    parser.add_argument("--backends", nargs="+", default=list(CONVOLUTION_CHOICES), choices=CONVOLUTION_CHOICES)
    parser.add_argument("--unet", nargs="+", default=["traced", "eager"], choices=["traced", "eager"],
                        help="traced: the frozen TorchScript trace diffusion-lab uses for plain CPU sampling (diffusion_lab/runtime/traced_unet.py)")
    parser.add_argument("--sd-sides", type=int, nargs="*", default=[])
    parser.add_argument("--out", default="outputs/bench_speed.md")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    lines = [
        f"{args.model}, {args.steps}-step DDIM sample with guidance {args.guidance} at batch 1, {torch.get_num_threads()} threads, "
        f"median of {args.runs} runs:",
        "",
        "| UNet | CPU convolutions | sample (s) | first sample, tracing included (s) | one guided UNet call (ms) | VAE decode (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for traced in args.unet:
        for backend in args.backends:
            result = time_backend(pipe, backend, traced == "traced", args.runs, args.steps, args.guidance)
            lines.append(f"| {traced} | {backend} | {result['sample_s']:.3f} | {result['first_s']:.3f} | {result['unet_ms']:.1f} | "
                         f"{result['decode_ms']:.1f} |")
            print(lines[-1], flush=True)
    if args.sd_sides:
        lines += ["", "SD 1.x-sized UNet (random weights), one forward at batch 2, median of 2:", "",
                  "| latent side | oneDNN (s) | native (s) |", "|---|---|---|"]
        for side in args.sd_sides:
            onednn, native = time_sd_sized_unet(side, "onednn"), time_sd_sized_unet(side, "native")
            lines.append(f"| {side} | {onednn:.2f} | {native:.2f} |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    print("\n" + table)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
