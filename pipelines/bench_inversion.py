"""Benchmark inversion fidelity: how well does sampling from an inversion give the image back?

    python pipelines/bench_inversion.py [--model shapes-tiny] [--scenes 50] [--steps 10 20 50 100 200]
        [--guidance 1 3 7.5] [--methods ddim null_text negative_prompt fixed_point]
        [--cells 'null_text:50:*' 'ddim:*:*'] [--exclude 'null_text:200:*'] [--out outputs/bench_inversion] [--quick]
        [--eta 0.3 0.6 1]   (edit_friendly: one row per eta)

For each held-out rendered scene (renders of random scenes with seeds from --seed on, never model samples), the
render is VAE-encoded once; every (method, steps S, guidance w) cell inverts all scenes with the scene's own
caption and reconstructs them by sampling at w (eta = 0; edit_friendly: at its eta with its recorded noise maps). Reported against the original render, in pixel space:
PSNR (dB), SSIM (Wang et al. 2004, 11x11 Gaussian window), MSE per dimension in [0, 1] (as DDIM's Table 2), the
latent RMSE (reconstructed z_0 vs encoded z_0), and seconds per image (inversion; reconstruction). The VAE round
trip decode(encode(x)) is the ceiling no latent inversion can beat.

Writes results.md (the table, the checks and the scenes that came back far below their own VAE round trip, also
printed), results.json (every number, PSNR per image too), psnr.png (PSNR against S, one panel per
guidance, the VAE ceiling dashed) and examples.png (a few scenes: render, VAE, each method at the largest S and w).
Expensive cells (null-text at S = 200 on a CPU) can be left out with --exclude or chosen with --cells: patterns
METHOD:S:W where any part may be '*'.

    python pipelines/bench_inversion.py --null-text-compare [--compare-scenes 6] [--rounds 2] [--threads 1]

instead compares null-text inversion's loops on the same renders at S = 50, w = 7.5 (--steps / --guidance: their
first value if given), interleaved scene by scene in one process (the order alternates): the paper's loop as
diffusion-lab ran it before (NullTextSettings.paper(), autograd through the eager UNet:
DIFFUSION_LAB_TRACED_UNET=inference), the paper's loop on today's runtime (gradients through the traced UNet), and
the default (NullTextSettings(), gradients traced; --inner-steps / --null-text-lr / --null-text-threshold-scale /
--final-threshold-scale / --final-fraction change it, to measure a variant). Per image: CPU seconds of the process (time.process_time) and
wall seconds of `invert` (no VAE), UNet calls (forwards with autograd, backward passes, forwards without), the
reconstruction's PSNR and its gap to the image's own VAE round trip; per round the ratio of CPU times and the
worst per-image gap difference (default - paper), checked against --gap-tolerance. With --paper-sensitivity
[FACTOR ...] (default 0.99 1.01) the first round also runs the paper's loop with its learning rate times each factor:
how far the paper's own per-image gap moves under a change that leaves its method alone, the paired mean
difference default - paper with a bootstrap interval, and a check that each image's default gap is at most the
paper's largest over those learning rates. Writes null_text_compare.md/json.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import time
from pathlib import Path

import numpy as np
import torch

from diffusion_lab.inversion import METHODS, invert
from diffusion_lab.latents import decode_latents, encode_images, image_size
from diffusion_lab.metrics import mse, psnr, ssim
from diffusion_lab.models import load_pipeline
from diffusion_lab.models.loading import synchronize
from diffusion_lab.sampling import sample
from diffusion_lab.schedules import NoiseSchedule
from diffusion_lab.shapes import caption, random_scene, render
from diffusion_lab.stats import bootstrap_mean_interval

HELD_OUT_SEED = 1_000_000  # scene seeds random_scene(HELD_OUT_SEED + i); training draws from default_rng(seed 0)
NUM_EXAMPLES = 4
BASIN_MARGIN_DB = 3.0  # a reconstruction this far below its own VAE round trip came back as another image
MISSES_LISTED = 8  # per cell, the worst scenes named in results.md (results.json has every image)


def cell_name(method: str, steps: int, guidance: float) -> str:
    return f"{method}:{steps}:{guidance:g}"


def selected(name: str, include: list[str] | None, exclude: list[str]) -> bool:
    """Whether the cell METHOD:S:W matches an --cells pattern (all if none given) and no --exclude pattern."""
    def matches(pattern: str) -> bool:
        parts, values = pattern.split(":"), name.split(":")
        if len(parts) != 3:
            raise SystemExit(f"cell patterns look like METHOD:S:W with '*' wildcards, got {pattern!r}")
        return all(fnmatch.fnmatch(v, p) or (p != "*" and _same_number(v, p)) for v, p in zip(values, parts))

    return (not include or any(matches(p) for p in include)) and not any(matches(p) for p in exclude)


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


def summarize(values: np.ndarray) -> dict:
    finite = values[np.isfinite(values)]
    return {"mean": float(finite.mean()) if len(finite) else float("inf"), "std": float(finite.std()) if len(finite) else 0.0}


def score(reconstructions: np.ndarray, originals: np.ndarray) -> dict:
    """PSNR / SSIM / MSE of uint8 (B, H, W, 3) reconstructions against the renders; PSNR also per image."""
    per_image = np.atleast_1d(psnr(reconstructions, originals))
    return {
        "psnr": {**summarize(per_image), "per_image": [round(float(v), 3) for v in per_image]},
        "ssim": summarize(np.atleast_1d(ssim(reconstructions, originals))),
        "mse": summarize(np.atleast_1d(mse(reconstructions, originals))),
    }


def run_cell(pipe, method, steps, guidance, latents, prompts, batch_size, options) -> tuple[np.ndarray, dict]:
    """Invert and reconstruct all scenes for one cell, in batches; returns (uint8 reconstructions, timings...)."""
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    outputs, latent_errors, invert_seconds, reconstruct_seconds = [], [], 0.0, 0.0
    for start in range(0, len(prompts), batch_size):
        z_0 = latents[start : start + batch_size]
        inversion = invert(pipe, None, prompts[start : start + batch_size], method, steps, guidance, latents=z_0,
                           progress=False, **options)
        invert_seconds += inversion.seconds
        begin = time.perf_counter()
        with torch.no_grad():
            denoiser = inversion.denoiser(pipe)
            reconstructed = sample(denoiser, inversion.z_T, schedule, inversion.timesteps, progress=False,
                                   on_step_end=inversion.source_rectifier(),  # direct: back on the pivot
                                   eta=inversion.eta, variance=inversion.variance,  # edit_friendly: its noise maps
                                   noises=inversion.sampling_noises()).sample
        synchronize(reconstructed.device)
        reconstruct_seconds += time.perf_counter() - begin
        latent_errors.append(((reconstructed - z_0) ** 2).flatten(1).mean(dim=1).sqrt().cpu())
        outputs.append(decode_latents(pipe, reconstructed, "uint8"))
    count = len(prompts)
    timing = {
        "invert_seconds_per_image": invert_seconds / count,
        "reconstruct_seconds_per_image": reconstruct_seconds / count,
        "latent_rmse": float(torch.cat(latent_errors).mean()),
    }
    return np.concatenate(outputs), timing


def markdown_table(results: list[dict], ceiling: dict, header: str) -> str:
    lines = [
        header,
        "",
        f"VAE round trip (ceiling): PSNR {ceiling['psnr']['mean']:.2f} dB, SSIM {ceiling['ssim']['mean']:.4f}, "
        f"MSE {ceiling['mse']['mean']:.5f}",
        "",
        "| method | S | w | PSNR (dB) | gap to VAE (dB) | SSIM | MSE [0,1] | latent RMSE | s/image invert | s/image reconstruct |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        gap = ceiling["psnr"]["mean"] - r["psnr"]["mean"]
        method = r["method"] if "eta" not in r else f"{r['method']} (eta {r['eta']:g})"
        lines.append(
            f"| {method} | {r['steps']} | {r['guidance']:g} | {r['psnr']['mean']:.2f} ± {r['psnr']['std']:.2f} | "
            f"{gap:.2f} | {r['ssim']['mean']:.4f} | {r['mse']['mean']:.5f} | {r['latent_rmse']:.4f} | "
            f"{r['invert_seconds_per_image']:.3f} | {r['reconstruct_seconds_per_image']:.3f} |"
        )
    return "\n".join(lines)


def checks(results: list[dict], ceiling: dict) -> list[str]:
    """The claims of the issue, verified on the numbers (PASS / FAIL / n/a), never assumed."""
    by_cell = {(r["method"], r["steps"], r["guidance"]): r["psnr"]["mean"] for r in results}
    lines = []
    ddim_1 = sorted((s, p) for (m, s, w), p in by_cell.items() if m == "ddim" and w == 1.0)
    if len(ddim_1) >= 2:
        increasing = all(b[1] >= a[1] - 0.05 for a, b in zip(ddim_1, ddim_1[1:]))
        trend = ", ".join(f"S={s}: {p:.2f}" for s, p in ddim_1)
        lines.append(f"[{'PASS' if increasing else 'FAIL'}] DDIM at w=1 improves with S (like DDIM's Table 2): {trend}")
    else:
        lines.append("[n/a] DDIM at w=1 improves with S: needs two or more S")
    pairs = [(s, by_cell[("ddim", s, 1.0)], by_cell[("ddim", s, 7.5)]) for (m, s, w) in by_cell
             if m == "ddim" and w == 7.5 and ("ddim", s, 1.0) in by_cell]
    if pairs:
        breaks = all(p1 - p75 > 3.0 for _, p1, p75 in pairs)
        detail = ", ".join(f"S={s}: {p1:.2f} -> {p75:.2f}" for s, p1, p75 in sorted(pairs))
        lines.append(f"[{'PASS' if breaks else 'FAIL'}] DDIM breaks at w=7.5 (> 3 dB below w=1): {detail}")
    else:
        lines.append("[n/a] DDIM at w=7.5 breaks: needs ddim at w=1 and w=7.5 for the same S")
    null_text = sorted((s, p) for (m, s, w), p in by_cell.items() if m == "null_text" and w == 7.5)
    if null_text:
        gaps = [(s, ceiling["psnr"]["mean"] - p) for s, p in null_text]
        within = all(g <= 1.0 for _, g in gaps)
        detail = ", ".join(f"S={s}: {g:.2f} dB" for s, g in gaps)
        lines.append(f"[{'PASS' if within else 'FAIL'}] null-text at w=7.5 within 1 dB of the VAE ceiling: {detail}")
    else:
        lines.append("[n/a] null-text at w=7.5 within 1 dB of the VAE ceiling: no null_text cell at w=7.5")
    friendly = [r for r in results if r["method"] == "edit_friendly"]
    if friendly:
        gaps = [(r["steps"], r["guidance"], r["eta"], ceiling["psnr"]["mean"] - r["psnr"]["mean"]) for r in friendly]
        exact = all(abs(g) <= 0.05 for *_, g in gaps)
        detail = ", ".join(f"S={s} w={w:g} eta={e:g}: {g:.3f} dB" for s, w, e, g in gaps)
        lines.append(f"[{'PASS' if exact else 'FAIL'}] edit-friendly reconstruction = VAE ceiling (within 0.05 dB) "
                     f"at every eta: {detail}")
    return lines


def images_far_below_their_round_trip(results: list[dict], ceiling: dict, seeds: list[int],
                                      margin_db: float = BASIN_MARGIN_DB) -> list[str]:
    """Per cell, the scenes reconstructed more than `margin_db` below their own VAE round trip (by scene seed).

    A mean hides them: one render in fifty that DDIM inversion carries into another basin of the model (lab 3's
    wrong-colour case) costs the mean only a fraction of a dB."""
    lines = []
    for r in results:
        gaps = sorted(((own - got, seed) for seed, got, own in
                       zip(seeds, r["psnr"]["per_image"], ceiling["psnr"]["per_image"]) if own - got > margin_db),
                      reverse=True)
        if gaps:
            method = r["method"] if "eta" not in r else f"{r['method']} (eta {r['eta']:g})"
            shown = ", ".join(f"{seed} ({gap:.1f} dB)" for gap, seed in gaps[:MISSES_LISTED])
            more = f" and {len(gaps) - MISSES_LISTED} more" if len(gaps) > MISSES_LISTED else ""
            lines.append(f"- {method}, S={r['steps']}, w={r['guidance']:g}: {len(gaps)} of {len(seeds)}, worst first: "
                         f"{shown}{more}")
    if not lines:
        return [f"No image more than {margin_db:g} dB below its own VAE round trip in any cell."]
    return [f"Images more than {margin_db:g} dB below their own VAE round trip (scene seed, gap):"] + lines


def plot(results: list[dict], ceiling: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    guidances = sorted({r["guidance"] for r in results})
    figure, axes = plt.subplots(1, len(guidances), figsize=(4.2 * len(guidances), 3.6), squeeze=False, sharey=True)
    for axis, guidance in zip(axes[0], guidances):
        for method in METHODS:
            for eta in sorted({r.get("eta", -1.0) for r in results if r["method"] == method}):
                rows = sorted((r["steps"], r["psnr"]["mean"]) for r in results if r["method"] == method
                              and r["guidance"] == guidance and r.get("eta", -1.0) == eta)
                if rows:
                    axis.plot(*zip(*rows), marker="o", label=method if eta < 0 else f"{method} eta={eta:g}")
        axis.axhline(ceiling["psnr"]["mean"], color="black", linestyle="--", label="VAE ceiling")
        axis.set_xscale("log")
        axis.set_xticks(sorted({r["steps"] for r in results}), [str(s) for s in sorted({r["steps"] for r in results})])
        axis.minorticks_off()
        axis.set_title(f"guidance w = {guidance:g}")
        axis.set_xlabel("steps S")
    axes[0][0].set_ylabel("reconstruction PSNR (dB)")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def example_grid(originals: np.ndarray, vae: np.ndarray, examples: dict[str, tuple[str, np.ndarray]], path: Path) -> None:
    """Rows: scenes; columns: render, VAE round trip, then each method's reconstruction (label, images)."""
    from PIL import Image, ImageDraw

    columns = [("render", "", originals), ("VAE", "", vae)] + [(m, label, images) for m, (label, images) in examples.items()]
    rows = min(NUM_EXAMPLES, len(originals))
    size = originals.shape[1]
    label_height = 26
    canvas = Image.new("RGB", (size * len(columns), rows * size + label_height), "white")
    draw = ImageDraw.Draw(canvas)
    for column, (name, detail, images) in enumerate(columns):
        short = {"negative_prompt": "neg-prompt", "fixed_point": "fixed-pt", "null_text": "null-text"}.get(name, name)
        draw.text((column * size + 2, 1), short, fill="black")
        draw.text((column * size + 2, 13), detail, fill="black")
        for row in range(rows):
            canvas.paste(Image.fromarray(images[row]), (column * size, label_height + row * size))
    canvas.save(path)


NULL_TEXT_LOOPS = {  # name: (invert's null_text_settings, DIFFUSION_LAB_TRACED_UNET)
    "paper, before": ("paper", "inference"),
    "paper": ("paper", "1"),
    "default": ("fast", "1"),
}


def null_text_calls(inversion) -> dict:
    """UNet calls of a null-text inversion (batch 1), counted from its losses and settings: the w = 1 pivot's
    forwards, the conditional forward of each step, forwards with autograd (one per recorded loss), backward
    passes (one per Adam step) and the forward of the sampling step after each inner loop (batch 2 in the paper's
    loop; none where check_first stopped on a forward that already gave it)."""
    from diffusion_lab.inversion import NullTextSettings

    losses = inversion.diagnostics["null_text_losses"]  # (S, inner_steps)
    settings = NullTextSettings(**{k: v for k, v in inversion.settings.items()
                                   if k in NullTextSettings.__dataclass_fields__})
    steps = losses.shape[0]
    recorded = (~torch.isnan(losses)).sum(dim=1)  # (S,)
    stopped_before_a_step = 0
    if settings.check_first:
        for i in range(steps):
            last = float(losses[i, int(recorded[i]) - 1])
            stopped_before_a_step += last < settings.threshold(i, steps)
    forwards_with_autograd = int(recorded.sum())
    return {"forwards_with_autograd": forwards_with_autograd,
            "backward": forwards_with_autograd - stopped_before_a_step,
            "forwards": 2 * steps + (steps - stopped_before_a_step)}


def compare_null_text(pipe, originals: np.ndarray, latents: torch.Tensor, prompts: list[str], vae_psnr: list[float],
                      steps: int, guidance: float, rounds: int, default_options: dict | None = None,
                      default_settings=None, sensitivity: tuple[float, ...] = ()) -> list[dict]:
    """One row per (round, scene, loop) of NULL_TEXT_LOOPS, interleaved scene by scene; `default_options`: invert's
    null-text keywords for the default loop (e.g. inner_steps, to measure a variant); `default_settings`: a
    NullTextSettings the "default" row runs instead of the defaults (a variant, see default_loop_variant).
    `sensitivity`: factors f of the paper's learning rate; in the first round each scene also runs the paper's loop
    as "paper, before" runs it but with learning rate f * 1e-2 (rows with loop "paper, lr x{f}"): how far the
    paper's own per-image gap moves under a change that leaves its method alone."""
    from diffusion_lab.inversion import NullTextSettings
    from diffusion_lab.metrics import psnr as psnr_of

    loops = dict(NULL_TEXT_LOOPS)
    papers_rate, traced_before = NullTextSettings.paper().learning_rate, NULL_TEXT_LOOPS["paper, before"][1]
    for factor in sensitivity:
        loops[sensitivity_loop(factor)] = (NullTextSettings.paper(learning_rate=factor * papers_rate), traced_before)

    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    previous = os.environ.get("DIFFUSION_LAB_TRACED_UNET")

    def run(index: int, loop: str, num_steps: int = steps):
        settings, traced = loops[loop]
        if loop == "default" and default_settings is not None:
            settings = default_settings
        os.environ["DIFFUSION_LAB_TRACED_UNET"] = traced
        cpu, wall = time.process_time(), time.perf_counter()
        options = (default_options or {}) if loop == "default" else {}
        inversion = invert(pipe, None, prompts[index], "null_text", num_steps, guidance,
                           latents=latents[index : index + 1], null_text_settings=settings, progress=False, **options)
        return inversion, time.process_time() - cpu, time.perf_counter() - wall

    rows = []
    try:
        for loop in NULL_TEXT_LOOPS:  # warm-up: every trace made (the first image of a session pays ~1 s for it)
            run(0, loop, 10)
        for round_index in range(rounds):
            for index in range(len(prompts)):
                order = list(NULL_TEXT_LOOPS) if (round_index + index) % 2 == 0 else list(NULL_TEXT_LOOPS)[::-1]
                if round_index == 0:  # gaps repeat between rounds: the paper's sensitivity once, after the timed loops
                    order += [sensitivity_loop(factor) for factor in sensitivity]
                for loop in order:
                    inversion, cpu, wall = run(index, loop)
                    with torch.no_grad():
                        reconstructed = sample(inversion.denoiser(pipe), inversion.z_T, schedule, inversion.timesteps,
                                               progress=False).sample
                    decoded = decode_latents(pipe, reconstructed, "uint8")
                    value = float(np.ravel(psnr_of(decoded, originals[index : index + 1]))[0])
                    rows.append({"round": round_index, "scene": index, "loop": loop, "cpu_s": cpu, "wall_s": wall,
                                 **null_text_calls(inversion), "psnr": value, "gap": vae_psnr[index] - value})
                print(f"  round {round_index + 1} scene {index}: " + ", ".join(
                    f"{r['loop']} {r['cpu_s']:.2f} s {r['gap']:.3f} dB" for r in rows[-len(order):]), flush=True)
    finally:
        if previous is None:
            os.environ.pop("DIFFUSION_LAB_TRACED_UNET", None)
        else:
            os.environ["DIFFUSION_LAB_TRACED_UNET"] = previous
    return rows


def sensitivity_loop(factor: float) -> str:
    """The name of the paper's loop run with its learning rate times `factor`."""
    return f"paper, lr x{factor:g}"


def paper_sensitivity_report(rows: list[dict], sensitivity: tuple[float, ...]) -> list[str]:
    """Per image (first round): how far the paper's gap moves when its learning rate is multiplied by each factor,
    the paired difference default - paper with a bootstrap interval, and the check that each image's gap with the
    default is at most the largest gap of the paper's loop over learning rates x1 and x each factor."""
    got = {(r["scene"], r["loop"]): r["gap"] for r in rows if r["round"] == 0}
    scenes = sorted({scene for scene, _ in got})
    paper = np.array([got[s, "paper, before"] for s in scenes])
    default = np.array([got[s, "default"] for s in scenes])
    perturbed = np.array([[got[s, sensitivity_loop(f)] for s in scenes] for f in sensitivity])  # (factors, N)
    moves = (perturbed - paper).ravel()
    difference = default - paper
    low, high = bootstrap_mean_interval(difference)  # 95%, seeded
    envelope = np.max(np.vstack([paper, perturbed]), axis=0)
    excess = default - envelope
    worst = int(np.argmax(excess))
    factors = ", ".join(f"x{f:g}" for f in sensitivity)
    return [
        f"The paper's loop's own sensitivity ({len(scenes)} images, its learning rate {factors}): its gap moves by "
        f"{np.median(np.abs(moves)):.3f} dB (median), at most {np.max(np.abs(moves)):.3f} dB, and is larger than "
        f"at x1 in {int((moves > 0).sum())} of {moves.size}; mean gap "
        + ", ".join(f"x{f:g} {row.mean():.3f}" for f, row in zip(sensitivity, perturbed)) + f", x1 {paper.mean():.3f} dB",
        f"Paired, default - paper (before): mean {difference.mean():+.3f} dB (95% bootstrap {low:+.3f} to "
        f"{high:+.3f}), the default's gap larger on {int((difference > 0).sum())} of {len(scenes)} images, by at most "
        f"{difference.max():+.3f} dB",
        f"[{'PASS' if excess.max() <= 0 else 'FAIL'}] per image, gap(default) <= the paper's largest gap over its "
        f"learning rate x1, {factors}: worst {excess[worst]:+.3f} dB (scene {scenes[worst]}), above it on "
        f"{int((excess > 0).sum())} of {len(scenes)}",
        "",
    ]


def default_loop_variant(threshold_scale: float | None = None, final_threshold_scale: float | None = None,
                         final_fraction: float | None = None):
    """The default NullTextSettings with its thresholds changed, to measure a variant without editing the defaults:
    early_stop_epsilon and early_stop_growth multiplied by `threshold_scale` (so the threshold of every step scales
    by it), final_threshold_scale (relative to that scaled threshold) and final_fraction replaced. None where
    nothing changes (the defaults)."""
    from diffusion_lab.inversion import NullTextSettings

    if threshold_scale is None and final_threshold_scale is None and final_fraction is None:
        return None
    defaults = NullTextSettings()
    scale = 1.0 if threshold_scale is None else threshold_scale
    for name, value in (("threshold scale", threshold_scale), ("final threshold scale", final_threshold_scale)):
        if value is not None and not value > 0:
            raise ValueError(f"the {name} must be > 0, got {value}")
    if final_fraction is not None and not 0 <= final_fraction <= 1:
        raise ValueError(f"the final fraction must be in [0, 1], got {final_fraction}")
    changes = {"early_stop_epsilon": defaults.early_stop_epsilon * scale,
               "early_stop_growth": defaults.early_stop_growth * scale}
    if final_threshold_scale is not None:
        changes["final_threshold_scale"] = final_threshold_scale
    if final_fraction is not None:
        changes["final_fraction"] = final_fraction
    return NullTextSettings.preset("fast", **changes)


def null_text_comparison_report(rows: list[dict], header: str, tolerance: float,
                                sensitivity: tuple[float, ...] = ()) -> str:
    """Per round: a table per image and loop, the CPU-time ratios and the worst per-image gap difference; with
    `sensitivity` (factors of the paper's learning rate, rows from compare_null_text) also the paper's own
    sensitivity and the per-image check against it (paper_sensitivity_report)."""
    lines = [header, ""]
    for round_index in sorted({r["round"] for r in rows}):
        got = {(r["scene"], r["loop"]): r for r in rows if r["round"] == round_index}
        scenes = sorted({scene for scene, _ in got})
        lines += [f"Round {round_index + 1}:", "",
                  "| scene | loop | CPU (s) | wall (s) | forwards with autograd | backward | other forwards | PSNR (dB) | "
                  "gap to VAE (dB) |", "|---|---|---|---|---|---|---|---|---|"]
        for scene in scenes:
            for loop in NULL_TEXT_LOOPS:
                r = got[scene, loop]
                lines.append(f"| {scene} | {loop} | {r['cpu_s']:.2f} | {r['wall_s']:.2f} | "
                             f"{r['forwards_with_autograd']} | {r['backward']} | {r['forwards']} | {r['psnr']:.2f} | "
                             f"{r['gap']:.3f} |")
        total = {loop: sum(got[s, loop]["cpu_s"] for s in scenes) for loop in NULL_TEXT_LOOPS}
        ratios = {base: [got[s, base]["cpu_s"] / got[s, "default"]["cpu_s"] for s in scenes]
                  for base in ("paper, before", "paper")}
        differences = [got[s, "default"]["gap"] - got[s, "paper, before"]["gap"] for s in scenes]
        worst = max(differences)
        lines += ["", "CPU s per image: " + ", ".join(f"{loop} {total[loop] / len(scenes):.2f}"
                                                     for loop in NULL_TEXT_LOOPS)]
        for base, values in ratios.items():
            lines.append(f"{base} / default, CPU time: {total[base] / total['default']:.2f} overall, per image "
                         f"{min(values):.2f} to {max(values):.2f}")
        lines.append("gap to VAE, mean: " + ", ".join(
            f"{loop} {np.mean([got[s, loop]['gap'] for s in scenes]):.3f} dB" for loop in NULL_TEXT_LOOPS))
        lines.append(f"[{'PASS' if worst <= tolerance else 'FAIL'}] per image, gap(default) <= gap(paper) + "
                     f"{tolerance:g} dB: worst difference {worst:+.3f} dB (scene {scenes[differences.index(worst)]})")
        lines.append("")
    if sensitivity:
        lines += paper_sensitivity_report(rows, sensitivity)
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-tiny", help="'shapes-tiny', a diffusers folder, or a hub id")
    parser.add_argument("--scenes", type=int, default=50)
    parser.add_argument("--seed", type=int, default=HELD_OUT_SEED, help="first held-out scene seed")
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--guidance", type=float, nargs="+", default=[1.0, 3.0, 7.5])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--cells", nargs="*", default=None, help="only these METHOD:S:W patterns ('*' wildcards)")
    parser.add_argument("--exclude", nargs="*", default=[], help="leave out these METHOD:S:W patterns")
    parser.add_argument("--batch-size", type=int, default=50, help="scenes inverted together")
    parser.add_argument("--inner-steps", type=int, default=None, help="null-text Adam steps per timestep (10)")
    parser.add_argument("--null-text-lr", type=float, default=None,
                        help="null-text Adam learning rate (1e-2, the paper's; shapes-tiny at S = 10 needs about 0.1)")
    parser.add_argument("--fixed-point-iterations", type=int, default=None, help="fixed-point iterations (5)")
    parser.add_argument("--eta", type=float, nargs="+", default=[1.0],
                        help="edit_friendly: the eta values (0 < eta <= 1), one row each")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    parser.add_argument("--out", default="outputs/bench_inversion")
    parser.add_argument("--quick", action="store_true", help="tiny run: 2 scenes, S in {2, 4}, w in {1, 7.5}")
    parser.add_argument("--null-text-compare", action="store_true",
                        help="compare null-text's loops (paper, default) per image instead (see above)")
    parser.add_argument("--compare-scenes", type=int, default=6, help="--null-text-compare: held-out scenes")
    parser.add_argument("--rounds", type=int, default=2, help="--null-text-compare: rounds over the scenes")
    parser.add_argument("--gap-tolerance", type=float, default=0.05,
                        help="--null-text-compare: dB by which the default's gap may exceed the paper's per image")
    parser.add_argument("--paper-sensitivity", type=float, nargs="*", default=None, metavar="FACTOR",
                        help="--null-text-compare: also run the paper's loop with its learning rate times each "
                             "FACTOR (no FACTOR: 0.99 1.01) and check each image's default gap against the largest")
    parser.add_argument("--null-text-threshold-scale", type=float, default=None,
                        help="--null-text-compare: multiply the default loop's early-stop threshold (epsilon and "
                             "growth) by this, to measure a variant")
    parser.add_argument("--final-threshold-scale", type=float, default=None,
                        help="--null-text-compare: the default loop's final_threshold_scale (1/6; relative to the "
                             "scaled threshold)")
    parser.add_argument("--final-fraction", type=float, default=None,
                        help="--null-text-compare: the default loop's final_fraction (0.1)")
    args = parser.parse_args(argv)
    if args.null_text_compare:
        return null_text_compare_main(args, parser)
    if args.quick:
        args.scenes, args.steps, args.guidance = 2, [2, 4], [1.0, 7.5]
        args.inner_steps = args.inner_steps or 2
        args.fixed_point_iterations = args.fixed_point_iterations or 2
    pipe, out, originals, prompts, latents = prepare(args, args.scenes)
    vae = np.concatenate([decode_latents(pipe, latents[i : i + args.batch_size]) for i in range(0, len(latents), args.batch_size)])
    ceiling = score(vae, originals)
    options = {}
    if args.inner_steps is not None:
        options.setdefault("null_text", {})["inner_steps"] = args.inner_steps
    if args.null_text_lr is not None:
        options.setdefault("null_text", {})["learning_rate"] = args.null_text_lr
    if args.fixed_point_iterations is not None:
        options["fixed_point"] = {"fixed_point_iterations": args.fixed_point_iterations}

    cells = [(m, s, w, eta) for m in args.methods for s in sorted(args.steps) for w in args.guidance
             for eta in (args.eta if m == "edit_friendly" else [None])
             if selected(cell_name(m, s, w), args.cells, args.exclude)]
    print(f"{len(cells)} cells x {args.scenes} scenes on {args.model} ({pipe.device}); VAE ceiling "
          f"PSNR {ceiling['psnr']['mean']:.2f} dB", flush=True)
    results, examples = [], {}
    largest_guidance = max(args.guidance)
    for method, steps, guidance, eta in cells:
        cell_options = dict(options.get(method, {}), **({} if eta is None else {"eta": eta}))
        reconstructions, timing = run_cell(pipe, method, steps, guidance, latents, prompts, args.batch_size,
                                           cell_options)
        row = {"method": method, "steps": steps, "guidance": guidance, **({} if eta is None else {"eta": eta}),
               **score(reconstructions, originals), **timing}
        results.append(row)
        print(f"  {cell_name(method, steps, guidance) + ('' if eta is None else f' eta={eta:g}'):>22}  PSNR {row['psnr']['mean']:6.2f} dB  SSIM "
              f"{row['ssim']['mean']:.4f}  {row['invert_seconds_per_image']:.3f} s/image", flush=True)
        if guidance == largest_guidance:  # cells come in increasing S: keep each method's largest S
            examples[method] = (f"S={steps} w={guidance:g}", reconstructions[:NUM_EXAMPLES])

    header = (f"Inversion fidelity of {args.model} on {args.scenes} held-out renders (seeds {args.seed}..."
              f"{args.seed + args.scenes - 1}), eta = 0 (edit_friendly: its eta), reconstruction sampled at the "
              "inversion's guidance")
    table = markdown_table(results, ceiling, header)
    verdicts = checks(results, ceiling)
    seeds = list(range(args.seed, args.seed + args.scenes))
    misses = images_far_below_their_round_trip(results, ceiling, seeds)
    text = table + "\n\n" + "\n".join(verdicts) + "\n\n" + "\n".join(misses) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"model": args.model, "scenes": args.scenes, "seed": args.seed,
                                                  "scene_seeds": seeds, "ceiling": ceiling, "cells": results}, indent=2))
    if results:
        plot(results, ceiling, out / "psnr.png")
    if examples:
        example_grid(originals, vae, examples, out / "examples.png")
    print(text)
    print(f"written to {out.resolve()}")
    return text


def prepare(args, num_scenes: int):
    """Threads, the output folder, the pipeline, and the held-out renders from --seed on: (pipe, out, originals
    (N, H, W, 3) uint8, captions, latents (N, C, h, w), encoded --batch-size at a time)."""
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, device=args.device, dtype="float32")
    scenes = [random_scene(args.seed + i) for i in range(num_scenes)]
    originals = np.stack([render(scene, size=image_size(pipe)).image for scene in scenes])
    prompts = [caption(scene) for scene in scenes]
    latents = torch.cat([encode_images(pipe, originals[i : i + args.batch_size])
                         for i in range(0, len(originals), args.batch_size)])
    return pipe, out, originals, prompts, latents


def null_text_compare_main(args, parser) -> str:
    steps = args.steps[0] if args.steps != parser.get_default("steps") else 50
    guidance = args.guidance[0] if args.guidance != parser.get_default("guidance") else 7.5
    if args.quick:
        args.compare_scenes, args.rounds, steps = 2, 1, 4
    pipe, out, originals, prompts, latents = prepare(args, args.compare_scenes)
    vae_psnr = [float(v) for v in np.ravel(psnr(decode_latents(pipe, latents, "uint8"), originals))]
    print(f"null-text loops on {len(prompts)} held-out renders of {args.model}, S = {steps}, w = {guidance:g}, "
          f"{torch.get_num_threads()} thread(s)", flush=True)
    default_options = {name: value for name, value in (("inner_steps", args.inner_steps),
                                                       ("learning_rate", args.null_text_lr)) if value is not None}
    variant = default_loop_variant(args.null_text_threshold_scale, args.final_threshold_scale, args.final_fraction)
    sensitivity = tuple(args.paper_sensitivity or (0.99, 1.01)) if args.paper_sensitivity is not None else ()
    if any(not f > 0 for f in sensitivity):
        parser.error(f"--paper-sensitivity factors must be > 0, got {list(sensitivity)}")
    rows = compare_null_text(pipe, originals, latents, prompts, vae_psnr, steps, guidance, args.rounds, default_options,
                             variant, sensitivity)
    described = "" if variant is None and not default_options else (
        f" (\"default\" is a variant: {variant or 'the defaults'}, {default_options or 'no other changes'})")
    header = (f"Null-text inversion, paper's loop against the default{described}, {args.model}, {len(prompts)} held-out renders "
              f"(seeds {args.seed}...{args.seed + len(prompts) - 1}), S = {steps}, w = {guidance:g}, "
              f"{torch.get_num_threads()} thread(s), interleaved scene by scene; gap = PSNR of the image's VAE round "
              "trip - PSNR of the reconstruction")
    text = null_text_comparison_report(rows, header, args.gap_tolerance, sensitivity)
    (out / "null_text_compare.md").write_text(text)
    (out / "null_text_compare.json").write_text(json.dumps({"model": args.model, "steps": steps, "guidance": guidance,
                                                            "vae_psnr": vae_psnr, "paper_sensitivity": list(sensitivity),
                                                            "rows": rows}, indent=2))
    print(text)
    return text


if __name__ == "__main__":
    os.environ.setdefault("DIFFUSION_LAB_NO_PROGRESS", "1")
    main()
