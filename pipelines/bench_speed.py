"""Measure sampling speed: a 50-step DDIM sample with guidance at batch 1, per UNet mode and CPU convolution backend;
and Prompt-to-Prompt against its limit.

    python pipelines/bench_speed.py [--model shapes-tiny] [--runs 7] [--threads 2] [--sd-sides 16 32 64]
    python pipelines/bench_speed.py --p2p [--rounds 5] [--threads 1] [--null-text]

--p2p measures, interleaved round by round in one process (CPU time of the process and wall time, medians over
--rounds): a plain guided sample (traced), a fresh P2P replace edit (a new source: source and target rows), the same
source edited again with another word, each "before" (the controlled UNet eager, no source cache: what diffusion-lab
did before the traced controlled path and the recorded source, DIFFUSION_LAB_TRACED_UNET=plain, source_cache=False)
and "after" (the defaults; before also ran every 16x16 call on native convolutions, after runs traced calls of 2 rows or more
on oneDNN); with --null-text also one null-text inversion of a held-out render per round, before (the paper's
loop, NullTextSettings.paper(), with gradients through the eager UNet) and after (the default loop, gradients
through the traced UNet; per-image fidelity of both: bench_inversion.py --null-text-compare), and it prints the
ratios fresh / (2 x sample) and repeated / sample (the limits are 1 and 1: the control costs nothing, a repeated
edit runs only its target) and null-text before / after.

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


P2P_SOURCE = "a large {colour} circle on a gray background"
P2P_TARGETS = ("blue", "green", "yellow", "purple", "orange", "white", "black")


def _clocked(fn) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of fn()."""
    cpu, wall = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - cpu, time.perf_counter() - wall


def time_p2p(pipe, rounds: int, steps: int, guidance: float, null_text: bool = False) -> dict[str, list[tuple[float, float]]]:
    """Per measurement, the (CPU s, wall s) of each round; see the module docstring."""
    from diffusion_lab.attention import SourceBranchCache
    from diffusion_lab.editing import edit_generated

    settings = dict(num_steps=steps, guidance_scale=guidance, progress=False)
    source = P2P_SOURCE.format(colour="red")
    target = lambda index: P2P_SOURCE.format(colour=P2P_TARGETS[index % len(P2P_TARGETS)])  # noqa: E731

    def use(mode: str) -> None:
        """before: controlled calls eager, native convolutions for 16x16 latents (the old rule for every call)."""
        os.environ["DIFFUSION_LAB_TRACED_UNET"] = "plain" if mode == "before" else "1"
        os.environ["DIFFUSION_LAB_CPU_CONVOLUTIONS"] = "native" if mode == "before" else "auto"

    def edits(mode: str, seed: int):
        """(fresh edit, repeated edit) of the source from `seed`, before or after."""
        cache = False if mode == "before" else SourceBranchCache()

        def edit(target_index: int):
            use(mode)
            edit_generated(pipe, source, [target(target_index)], seed=seed, source_cache=cache, **settings)

        return (lambda: edit(seed)), (lambda: edit(seed + 1))

    def sample(mode: str):
        def run():
            use(mode)
            text_to_image(pipe, [source], num_steps=steps, guidance_scale=guidance, progress=False)
        return run

    def inversion(mode: str):
        """Null-text inversion of the round's held-out render: the paper's loop before, the default after."""
        from diffusion_lab.inversion import invert
        from diffusion_lab.latents import image_size
        from diffusion_lab.shapes import caption, random_scene, render

        def run():
            use(mode)
            scene = random_scene(1_000_000 + len(results[f"null-text inversion, {mode}"]))
            invert(pipe, render(scene, size=image_size(pipe)).image, caption(scene), method="null_text",
                   num_steps=steps, null_text_settings="paper" if mode == "before" else None, progress=False)
        return run

    results: dict[str, list[tuple[float, float]]] = {name: [] for name in (
        "plain sample, before", "fresh edit, before", "repeated edit, before", "plain sample, after",
        "fresh edit, after", "repeated edit, after")}
    if null_text:
        results["null-text inversion, before"], results["null-text inversion, after"] = [], []
    with torch.inference_mode():
        for _ in range(CALLS_BEFORE_TRACING // steps + 2):  # warm-up: every graph traced
            sample("after")()
        for warm_up in range(4):
            for fn in edits("after", 1000 + warm_up):
                fn()
    for round_index in range(rounds):
        before_fresh, before_again = edits("before", round_index)
        after_fresh, after_again = edits("after", round_index)
        order = [("plain sample, before", sample("before")), ("fresh edit, before", before_fresh),
                 ("repeated edit, before", before_again), ("plain sample, after", sample("after")),
                 ("fresh edit, after", after_fresh), ("repeated edit, after", after_again)]
        if null_text:
            order += [("null-text inversion, before", inversion("before")),
                      ("null-text inversion, after", inversion("after"))]
            if round_index % 2:  # alternate which loop runs first
                order[-2:] = order[-1:-3:-1]
        for name, fn in order:
            with torch.inference_mode() if not name.startswith("null-text") else torch.no_grad():
                results[name].append(_clocked(fn))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {v[-1][0]:.2f}" for n, v in results.items()), flush=True)
    use("after")
    return results


def p2p_table(results: dict, model: str, steps: int, guidance: float, rounds: int) -> list[str]:
    median = {name: tuple(statistics.median(v[i] for v in values) for i in (0, 1)) for name, values in results.items()}
    lines = [f"{model}, {steps} DDIM steps, guidance {guidance}, {torch.get_num_threads()} thread(s), interleaved, "
             f"median of {rounds} rounds (CPU time of the process; wall time):", "",
             "| measurement | CPU (s) | wall (s) | CPU / plain sample (same side) |", "|---|---|---|---|"]
    for name, (cpu, wall) in median.items():
        side = median["plain sample, before" if name.endswith("before") else "plain sample, after"]
        lines.append(f"| {name} | {cpu:.3f} | {wall:.3f} | {cpu / side[0]:.2f} |")
    lines.append("")
    for when in ("before", "after"):
        sample = median[f"plain sample, {when}"]
        fresh, again = median[f"fresh edit, {when}"], median[f"repeated edit, {when}"]
        lines.append(f"{when}: fresh edit / (2 x sample) = {fresh[0] / (2 * sample[0]):.2f} CPU "
                     f"({fresh[1] / (2 * sample[1]):.2f} wall); repeated edit / sample = {again[0] / sample[0]:.2f} CPU "
                     f"({again[1] / sample[1]:.2f} wall)")
    if "null-text inversion, before" in median:
        before, after = median["null-text inversion, before"], median["null-text inversion, after"]
        lines.append(f"null-text inversion, paper's loop before / default after = {before[0] / after[0]:.2f} CPU "
                     f"({before[1] / after[1]:.2f} wall)")
    return lines


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
    parser.add_argument("--p2p", action="store_true", help="Prompt-to-Prompt against its limit (see above) instead")
    parser.add_argument("--rounds", type=int, default=5, help="--p2p: interleaved rounds")
    parser.add_argument("--null-text", action="store_true",
                        help="--p2p: also one null-text inversion per round, the paper's loop and the default")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    if args.p2p:
        results = time_p2p(pipe, args.rounds, args.steps, args.guidance, args.null_text)
        table = "\n".join(p2p_table(results, args.model, args.steps, args.guidance, args.rounds))
        print("\n" + table)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table + "\n")
        return table
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
