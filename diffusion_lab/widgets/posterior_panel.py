"""Lab 2 panels and experiments: the generalized posterior q_sigma, eta, sigma-hat, and DDIM's Table 1.

    figure = sigma_figure(schedule, num_steps=10)              # sigma_t(eta) and sigma-hat over the steps
    samples = sample_settings(pipe, prompts, (10, 50), SETTINGS)   # samples, side by side
    table = table1(pipe, steps=(10, 20, 50, 100, 1000), num_samples=16)   # FD + analyzer accuracy
    SamplerPanel(pipe)                                         # eta slider, S, sigma-hat, Run

The marginal check and the Table 1 claims as rates are diffusion_lab.studies.posterior's (marginal_study,
sampler_study). Every equation is diffusion_lab.posterior's (sigma_from_eta, sigma_hat); sampling is
sampling.sample with a TextConditionedDenoiser; the sample-quality distance is quality.frechet_distance in quality.shapes_features' documented 16-d feature space.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import numpy as np
import torch

from diffusion_lab.models.defaults import resolve_guidance

from .common import ImageView, Panel, markdown_table, slider

# (label, eta, variance) of the sampler settings of DDIM's Table 1.
SETTINGS = (
    ("eta=0 (DDIM)", 0.0, "eta"),
    ("eta=0.2", 0.2, "eta"),
    ("eta=0.5", 0.5, "eta"),
    ("eta=1 (DDPM)", 1.0, "eta"),
    ("sigma-hat", 1.0, "sigma_hat"),
)
TABLE_STEPS = (10, 20, 50, 100, 1000)
# DDIM paper (Song et al. 2021), Table 1, CIFAR10 32x32 FID (lower is better), S = 10, 20, 50, 100, 1000.
CIFAR10_FID = {
    "eta=0 (DDIM)": (13.36, 6.84, 4.67, 4.16, 4.04),
    "eta=0.2": (14.04, 7.11, 4.77, 4.25, 4.09),
    "eta=0.5": (16.66, 8.35, 5.25, 4.46, 4.29),
    "eta=1 (DDPM)": (41.07, 18.36, 8.01, 5.78, 4.73),
    "sigma-hat": (367.43, 133.37, 32.72, 9.99, 3.17),
}


def schedule_of(pipe):
    from diffusion_lab.schedules import NoiseSchedule

    return NoiseSchedule.from_scheduler_config(pipe.scheduler)


def sigma_figure(schedule, num_steps: int = 10, etas: Sequence[float] = (0.2, 0.5, 1.0)):
    """sigma_t over the steps of an S-step subsequence: eta * (DDPM posterior std), and the larger sigma-hat."""
    from diffusion_lab.posterior import sigma_from_eta, sigma_hat
    from diffusion_lab.schedules import timestep_pairs
    from diffusion_lab.viz import line_plot

    pairs = timestep_pairs(schedule.timesteps(num_steps))
    ts = [t for t, _ in pairs]
    series = {}
    for eta in etas:
        series[f"eta={eta:g}"] = [float(sigma_from_eta(schedule.alpha_bar(t), schedule.alpha_bar(p), eta)) for t, p in pairs]
    series["sigma-hat"] = [float(sigma_hat(schedule.alpha_bar(t), schedule.alpha_bar(p))) for t, p in pairs]
    series["sqrt(1 - alpha_bar_t-1) (max in family)"] = [float((1 - schedule.alpha_bar(p)).sqrt()) for _, p in pairs]
    return line_plot(ts, series, xlabel="t (sampling goes right to left)", ylabel="sigma_t",
                     title=f"noise added per step, S={num_steps}")


# ----------------------------------------------------------------------------------------------------------
# Sampling with any (eta, variance, S)
# ----------------------------------------------------------------------------------------------------------


def sampling_timesteps(schedule, num_steps: int):
    """The schedule's own S-step subsequence; for S = T (every step, Table 1's S = 1000) the "trailing" one,
    T-1, ..., 0, because "leading" with steps_offset = 1 would need t = T (diffusers' DDIMScheduler has the same
    limit)."""
    if int(num_steps) >= schedule.num_train_timesteps:
        return schedule.timesteps(schedule.num_train_timesteps, spacing="trailing")
    return schedule.timesteps(int(num_steps))


@torch.no_grad()
def sample_images(pipe, prompts: Sequence[str], num_steps: int, eta: float = 0.0, variance: str = "eta",
                  guidance_scale: float = 1.0, seed: int = 0, x_T: torch.Tensor | None = None,
                  callback: Callable | None = None, progress: bool = False):
    """Text-to-image through sampling.sample with any eta / sigma-hat: uint8 (B, H, W, 3).

    x_T (B, C, h, w) defaults to initial_noise(pipe, B, seed); the sampler's own noise uses seed + 1.
    guidance_scale 1 runs one UNet call per step (no unconditional branch)."""
    from diffusion_lab.denoisers import TextConditionedDenoiser
    from diffusion_lab.generation import initial_noise
    from diffusion_lab.latents import decode_latents
    from diffusion_lab.sampling import sample
    from diffusion_lab.text import encode_prompts

    prompts = list(prompts)
    device = pipe.unet.device
    schedule = schedule_of(pipe)
    x_T = initial_noise(pipe, len(prompts), seed) if x_T is None else x_T
    uncond = encode_prompts(pipe, [""]).to(device) if guidance_scale != 1.0 else None
    denoiser = TextConditionedDenoiser(pipe.unet, encode_prompts(pipe, prompts).to(device), uncond, guidance_scale)
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    result = sample(denoiser, x_T.to(device), schedule, sampling_timesteps(schedule, num_steps), eta=float(eta),
                    variance=variance, generator=generator, callback=callback, progress=progress)
    return decode_latents(pipe, result.sample)


def sample_settings(pipe, prompts: Sequence[str], steps: Sequence[int] = (10, 50), settings=SETTINGS,
                    guidance_scale: float | None = None, seed: int = 0):
    """Samples of the same prompts and x_T for every (S, setting): a PIL grid (a row per (S, setting))."""
    from diffusion_lab.viz import image_grid

    guidance_scale = resolve_guidance(pipe, guidance_scale)
    pictures, row_labels = [], []
    for num_steps in steps:
        for label, eta, variance in settings:
            images = sample_images(pipe, prompts, num_steps, eta, variance, guidance_scale, seed)
            pictures.extend(images)
            row_labels.append(f"S={num_steps} {label}")
    return image_grid(pictures, columns=len(prompts), row_labels=row_labels, scale=2)


# ----------------------------------------------------------------------------------------------------------
# DDIM Table 1 in the shapes world
# ----------------------------------------------------------------------------------------------------------


def caption_accuracy(images, scenes, analyses=None) -> dict:
    """One-object captions: accuracy of the analyzer's largest object (shape, colour, size) and of the background
    against the captioned scene (positions are not in the captions, so none is asked for).
    `analyses`: the images' `analyze` results when the caller has them already."""
    from diffusion_lab.shapes import analyze

    right = {"shape": 0, "colour": 0, "size": 0, "background": 0}
    analyses = [analyze(np.asarray(image)) for image in images] if analyses is None else analyses
    for analysis, scene in zip(analyses, scenes):
        want = scene.objects[0]
        found = max(analysis.objects, key=lambda o: o.mask.sum()) if analysis.objects else None
        right["background"] += analysis.background == scene.background
        for attribute in ("shape", "colour", "size"):
            right[attribute] += found is not None and getattr(found, attribute) == getattr(want, attribute)
    return {k: v / max(len(scenes), 1) for k, v in right.items()}


def table1(pipe, steps: Sequence[int] = TABLE_STEPS, settings=SETTINGS, num_samples: int = 16,
           guidance_scale: float = 1.0, seed: int = 0, reference_count: int = 256, batch_size: int = 64,
           on_step: Callable[[], None] | None = None, log: Callable[[str], None] | None = None) -> dict:
    """DDIM's Table 1 in the shapes world.

    Prompts: captions of `num_samples` random one-object scenes; every (S, setting) samples the SAME prompts from
    the SAME x_T. Distance: Frechet distance between Gaussians fitted to quality.shapes_features of the samples and
    of `reference_count` renders of other random one-object scenes (lower is better; only comparable within this
    project and at the same num_samples). Accuracy: the analyzer on the samples (`caption_accuracy`).
    The data row: the same numbers for renders of the prompts' own scenes (data_fd is the FD's small-sample floor).
    Returns dict(fd={setting: [per S]}, accuracy={setting: [per S: dict]}, data_fd, data_accuracy,
    samples={(S, setting): uint8 (num_samples, H, W, 3)}, steps, prompts, num_samples, seconds).
    """
    from diffusion_lab.generation import initial_noise
    from diffusion_lab.quality import feature_matrix, frechet_distance
    from diffusion_lab.shapes import analyze, caption, random_scene, render

    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, num_objects=1) for _ in range(num_samples)]
    prompts = [caption(scene) for scene in scenes]
    reference_rng = np.random.default_rng(seed + 10_000)
    reference = feature_matrix([render(random_scene(reference_rng, num_objects=1)).image for _ in range(reference_count)])
    renders = [render(scene).image for scene in scenes]
    x_T = initial_noise(pipe, num_samples, seed)  # (N, C, h, w), shared by every setting
    start = time.perf_counter()
    data_fd = frechet_distance(feature_matrix(renders), reference)
    data_accuracy = caption_accuracy(renders, scenes)
    fd = {label: [] for label, _, _ in settings}
    accuracy = {label: [] for label, _, _ in settings}
    samples = {}
    callback = (lambda *args: on_step()) if on_step is not None else None
    for label, eta, variance in settings:
        for num_steps in steps:
            images = np.concatenate([
                sample_images(pipe, prompts[i : i + batch_size], num_steps, eta, variance, guidance_scale, seed,
                              x_T=x_T[i : i + batch_size], callback=callback)
                for i in range(0, num_samples, batch_size)
            ])
            samples[(num_steps, label)] = images
            analyses = [analyze(image) for image in images]  # once per image, for both numbers
            fd[label].append(frechet_distance(feature_matrix(images, analyses), reference))
            accuracy[label].append(caption_accuracy(images, scenes, analyses))
            if log is not None:
                log(f"{label} S={num_steps}: FD {fd[label][-1]:.3f}")
    return {"fd": fd, "data_fd": data_fd, "data_accuracy": data_accuracy, "accuracy": accuracy, "samples": samples, "steps": list(steps),
            "prompts": prompts, "num_samples": num_samples, "seconds": time.perf_counter() - start}


def table1_markdown(table: dict, with_cifar: bool = True) -> str:
    """FD per (setting, S) with the paper's CIFAR10 FID beside it (for the S both have)."""
    steps = table["steps"]
    rows = [{"sampler": "renders (data)", **{f"S={s}": table["data_fd"] for s in steps}}]
    for label, values in table["fd"].items():
        row = {"sampler": label}
        for s, value in zip(steps, values):
            row[f"S={s}"] = value
        rows.append(row)
        if with_cifar and label in CIFAR10_FID:
            paper = dict(zip(TABLE_STEPS, CIFAR10_FID[label]))
            rows.append({"sampler": "  CIFAR10 FID (paper)", **{f"S={s}": paper.get(s, "") for s in steps}})
    return markdown_table(rows, ["sampler"] + [f"S={s}" for s in steps], digits=2)


def accuracy_markdown(table: dict) -> str:
    """Analyzer accuracy per (setting, S): mean of shape, colour, size and background accuracy."""
    steps = table["steps"]
    data = table["data_accuracy"]
    rows = [{"sampler": "renders (data)",
             **{f"S={s}": float(np.mean([data[k] for k in ("shape", "colour", "size", "background")])) for s in steps}}]
    for label, per_step in table["accuracy"].items():
        row = {"sampler": label}
        for s, accuracy in zip(steps, per_step):
            row[f"S={s}"] = float(np.mean([accuracy[k] for k in ("shape", "colour", "size", "background")]))
        rows.append(row)
    return markdown_table(rows, ["sampler"] + [f"S={s}" for s in steps], digits=2)


def table1_figure(table: dict):
    """FD against S (log scale), one line per sampler setting."""
    from diffusion_lab.viz import line_plot

    return line_plot(table["steps"], table["fd"], xlabel="S (sampling steps)", ylabel="Frechet distance (shapes features)",
                     title=f"DDIM Table 1, shapes world ({table['num_samples']} samples)", logx=True)


def table1_samples_figure(table: dict, per_cell: int = 4):
    """The first `per_cell` samples of every (setting, S): rows = settings, column blocks = S."""
    from diffusion_lab.viz import image_grid

    steps = table["steps"]
    pictures, row_labels = [], []
    for label in table["fd"]:
        row_labels.append(label)
        for s in steps:
            pictures.extend(table["samples"][(s, label)][:per_cell])
    return image_grid(pictures, columns=per_cell * len(steps), row_labels=row_labels, scale=1,
                      labels=[f"S={s}" if i % per_cell == 0 else "" for s in steps for i in range(per_cell)] * len(table["fd"]))


# ----------------------------------------------------------------------------------------------------------
# Panel
# ----------------------------------------------------------------------------------------------------------


class SamplerPanel(Panel):
    """Pick eta (or sigma-hat) and S, press Run: samples of the same prompts and x_T, and the predicted x_0
    of the first sample along the way (what the sampler believes the image is at each step)."""

    def __init__(self, pipe, prompts: Sequence[str], num_steps: int = 20, eta: float = 0.0,
                 guidance_scale: float | None = None, seed: int = 0):
        import ipywidgets as widgets

        super().__init__()
        guidance_scale = resolve_guidance(pipe, guidance_scale)
        self.pipe = pipe
        self.prompts = widgets.Textarea(value="\n".join(prompts), description="prompts",
                                        layout=widgets.Layout(width="520px", height="80px"))
        self.eta = slider("eta", float(eta), 0.0, 1.0, 0.1)
        self.sigma_hat = widgets.Checkbox(value=False, description="sigma-hat (ignores eta)")
        self.steps = widgets.Dropdown(options=[5, 10, 20, 50, 100, 1000], value=int(num_steps), description="S")
        self.guidance = slider("guidance w", float(guidance_scale), 1.0, 10.0, 0.5)
        self.seed = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="160px"))
        self.button.description = "Run sampler"
        self.samples = ImageView(min_side=128, description="samples (same x_T)")
        self.trajectory = ImageView(min_side=96, description="predicted x_0 of the first sample over the steps")
        self.widget = widgets.VBox([
            widgets.HTML("<b>Sampling with the generalized posterior</b>"),
            self.prompts, widgets.HBox([self.eta, self.sigma_hat]), widgets.HBox([self.steps, self.guidance, self.seed]),
            widgets.HBox([self.button, self.progress.widget]), self.samples.widget, self.trajectory.widget, self.log,
        ])

    def compute(self) -> None:
        from diffusion_lab.latents import decode_latents
        from diffusion_lab.viz import image_grid

        prompts = [line.strip() for line in self.prompts.value.splitlines() if line.strip()]
        if not prompts:
            raise ValueError("write at least one prompt, one per line")
        num_steps = int(self.steps.value)
        variance = "sigma_hat" if self.sigma_hat.value else "eta"
        snapshots, labels = [], []
        every = max(1, num_steps // 8)

        def callback(step_index, t, x_t, x0_hat):
            self.progress.advance()
            if step_index % every == 0 or step_index == num_steps - 1:
                snapshots.append(x0_hat[:1].detach().clone())
                labels.append(f"t={int(t)}")

        self.progress.start(num_steps, f"sampling S={num_steps}")
        images = sample_images(self.pipe, prompts, num_steps, float(self.eta.value), variance,
                               float(self.guidance.value), int(self.seed.value), callback=callback)
        setting = "sigma-hat" if variance == "sigma_hat" else f"eta={float(self.eta.value):g}"
        self.samples.show(image_grid(list(images), labels=[setting] * len(images), scale=2))
        decoded = decode_latents(self.pipe, torch.cat(snapshots))
        self.trajectory.show(image_grid(list(decoded), labels=labels, scale=2))
