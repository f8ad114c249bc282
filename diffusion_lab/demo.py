"""The headless demo behind `make demo` / `python -m diffusion_lab demo`.

It writes pictures (and a small metrics.json) into the output folder:
- shapes_world.png: random scenes with their captions;  edits.png: one scene and each ground-truth edit;
- samplers.png: the generalized posterior sampler (eta = 0, 0.5, 1 and sigma-hat; S = 10 and 50 steps)
  driven by the closed-form denoiser of a small set of renders, where the truth is known;
- shapes_tiny_samples.png: text-to-image samples of the built-in model (when its weights are present).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .shapes import SCENE_EDIT_KINDS, caption, edit_scene, random_scene, render
from .viz import image_grid

SAMPLER_SETTINGS = [("eta 0 (DDIM)", 0.0, "eta"), ("eta 0.5", 0.5, "eta"), ("eta 1 (DDPM)", 1.0, "eta"), ("sigma-hat", 1.0, "sigma_hat")]


def shapes_world_figure(seed: int, count: int = 8):
    scenes = [random_scene(seed + i) for i in range(count)]
    captions = [caption(s) for s in scenes]
    return image_grid([render(s).image for s in scenes], columns=4, scale=2), captions


def edits_figure(seed: int, max_tries: int = 100):
    """One two-object scene and every kind of ground-truth edit (the first seed where all of them fit)."""
    for offset in range(max_tries):
        scene = random_scene(seed + offset, num_objects=2)
        rng = np.random.default_rng(seed + offset)
        try:
            edits = [edit_scene(scene, kind, rng=rng) for kind in SCENE_EDIT_KINDS]
            break
        except ValueError:  # e.g. no room to enlarge an object: try the next scene
            continue
    else:
        raise RuntimeError("no scene admitted every edit kind")
    images = [render(scene).image] + [render(e.target).image for e in edits]
    labels = ["source"] + [e.kind for e in edits]
    return image_grid(images, columns=len(images), labels=labels, scale=2)


def closed_form_sampler_study(seed: int, num_data: int = 48, size: int = 32, samples_per_setting: int = 4, steps=(10, 50)):
    """Samples of the closed-form denoiser for every sampler setting, and their distance to the data."""
    from .closed_form import ClosedFormDenoiser
    from .sampling import sample
    from .schedules import NoiseSchedule

    data = torch.stack(
        [torch.from_numpy(render(random_scene(10_000 + seed + i), size).image).permute(2, 0, 1).float() / 127.5 - 1 for i in range(num_data)]
    )  # (N, 3, size, size) in [-1, 1]
    schedule = NoiseSchedule.create(beta_schedule="linear", num_train_timesteps=1000)
    denoiser = ClosedFormDenoiser(data, schedule, data_std=0.05)
    rows, row_labels, metrics = [], [], {}
    for num_steps in steps:
        timesteps = schedule.timesteps(num_steps)
        for name, eta, variance in SAMPLER_SETTINGS:
            generator = torch.Generator().manual_seed(seed)
            x_T = torch.randn((samples_per_setting, 3, size, size), generator=generator, dtype=torch.float64)
            result = sample(denoiser, x_T, schedule, timesteps, eta=eta, variance=variance, generator=generator, progress=False)
            x0 = result.sample.clamp(-1, 1)
            distance = torch.cdist(x0.flatten(1).double(), data.flatten(1).double()).min(dim=1).values / np.sqrt(x0[0].numel())
            metrics[f"S={num_steps} {name}"] = round(float(distance.mean()), 4)
            rows.extend(x0)
            row_labels.append(f"S={num_steps} {name}")
    figure = image_grid(rows, columns=samples_per_setting, row_labels=row_labels, scale=2)
    return figure, metrics


def shapes_tiny_figure(seed: int, count: int = 8, steps: int = 50, guidance: float = 5.0):
    from .models.shapes_tiny import MODEL_DIR

    from .sampling import sample
    from .schedules import NoiseSchedule
    from .text import encode_prompts

    if not (MODEL_DIR / "model_index.json").exists():
        return None, []
    from .denoisers import TextConditionedDenoiser
    from .latents import decode_latents
    from .models import load_pipeline
    pipe = load_pipeline("shapes-tiny", device="cpu")
    scenes = [random_scene(seed + 100 + i, num_objects=1) for i in range(count)]
    prompts = [caption(s) for s in scenes]
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    denoiser = TextConditionedDenoiser(pipe.unet, encode_prompts(pipe, prompts), encode_prompts(pipe, [""]), guidance_scale=guidance)
    generator = torch.Generator().manual_seed(seed)
    size = pipe.unet.config.sample_size
    x_T = torch.randn((count, pipe.unet.config.in_channels, size, size), generator=generator)
    with torch.no_grad():
        latents = sample(denoiser, x_T, schedule, schedule.timesteps(steps), progress=True).sample
    images = decode_latents(pipe, latents)
    return image_grid(images, columns=4, scale=2), prompts


def run_demo(out_dir: str = "outputs/demo", seed: int = 0) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figure, captions = shapes_world_figure(seed)
    figure.save(out / "shapes_world.png")
    (out / "captions.txt").write_text("\n".join(captions) + "\n")
    print("Shapes world:", *captions, sep="\n  ")
    edits_figure(seed).save(out / "edits.png")
    figure, sampler_metrics = closed_form_sampler_study(seed)
    figure.save(out / "samplers.png")
    print("Closed-form denoiser, RMS distance of samples to the nearest training image ([-1, 1] units):")
    for key, value in sampler_metrics.items():
        print(f"  {key:<26} {value:.4f}")
    metrics = {"closed_form_distance_to_data": sampler_metrics}
    figure, prompts = shapes_tiny_figure(seed)
    if figure is not None:
        figure.save(out / "shapes_tiny_samples.png")
        (out / "shapes_tiny_prompts.txt").write_text("\n".join(prompts) + "\n")
        print("shapes-tiny samples for:", *prompts, sep="\n  ")
    else:
        print("shapes-tiny weights not found: skipped its samples")
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1) + "\n")
    for path in sorted(out.iterdir()):
        print(f"  wrote {path}")
    return out


def run_labs_demo(out_dir: str = "outputs/labs", extra_args=()) -> Path:
    """Run the four labs headlessly with papermill (pipelines/run_labs.py) into `out_dir`: one folder per lab with
    the executed notebook, its figures and metrics.json; the runner prints where they are.

    extra_args go to the runner (e.g. ["--quick"], ["--labs", "02", "--full-table"], ["-p", "SEED", "3"]).
    Needs the repository checkout (labs/ and pipelines/ are not part of the installed package)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    runner = repo / "pipelines" / "run_labs.py"
    if not runner.exists():
        raise FileNotFoundError(f"{runner} is missing: the labs demo runs from a checkout of the repository")
    command = [sys.executable, str(runner), "--out", str(out_dir), *extra_args]
    subprocess.run(command, check=True, cwd=repo)
    return Path(out_dir)
