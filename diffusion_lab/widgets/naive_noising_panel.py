"""Lab 1 panels and experiments: the forward process on a real image, and naive editing by noising + denoising.

    strip, info = forward_process_strip(pipe, image, timesteps=(0, 250, 500, 750, 999))
    sweep = strength_sweep(pipe, image, source_prompt, target_prompt, strengths=(0.2, 0.5, 0.8, 1.0))
    ForwardProcessPanel(pipe, image)        # slider over t: x_t in pixels and in latents
    NaiveEditPanel(pipe, image, prompt)     # strength slider + target prompt + Run

All computation is diffusion_lab's: posterior.forward_marginal_sample (q(x_t | x_0)),
naive_noising.noise_image_to_strength / naive_noising_edit (SDEdit), metrics.psnr, shapes.analyze.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from diffusion_lab.models.defaults import resolve_guidance
from diffusion_lab.shapes.scoring import score_scene_edit

from .common import ImageView, Panel, markdown_table, slider

# ----------------------------------------------------------------------------------------------------------
# Experiments (pure functions: pictures and numbers)
# ----------------------------------------------------------------------------------------------------------


def schedule_of(pipe):
    from diffusion_lab.schedules import NoiseSchedule

    return NoiseSchedule.from_scheduler_config(pipe.scheduler)


def noise_levels_figure(pipe):
    """sqrt(alpha_bar_t) (how much of x_0 is left) and sqrt(1 - alpha_bar_t) (noise std) against t."""
    from diffusion_lab.viz import line_plot

    schedule = schedule_of(pipe)
    t = np.arange(schedule.num_train_timesteps)
    alpha_bar = schedule.alphas_cumprod.numpy()
    return line_plot(
        t, {"sqrt(alpha_bar_t)  (signal)": np.sqrt(alpha_bar), "sqrt(1 - alpha_bar_t)  (noise)": np.sqrt(1 - alpha_bar)},
        xlabel="t", ylabel="coefficient", title="q(x_t | x_0): how much signal, how much noise",
    )


@torch.no_grad()
def noised_views(pipe, image, t: int, seed: int = 0):
    """(x_t in pixel space, z_t decoded) at noise level t, from one draw of eps (seeded), as uint8 images."""
    from diffusion_lab.images import pil_to_tensor, to_uint8
    from diffusion_lab.latents import decode_latents, encode_images
    from diffusion_lab.posterior import forward_marginal_sample

    alpha_bar_t = schedule_of(pipe).alpha_bar(int(t))
    x_0 = pil_to_tensor(image)  # (1, 3, H, W) in [-1, 1]
    x_t = forward_marginal_sample(x_0, alpha_bar_t, generator=torch.Generator().manual_seed(seed))
    z_0 = encode_images(pipe, image)  # (1, C, h, w)
    z_t = forward_marginal_sample(z_0, alpha_bar_t, generator=torch.Generator(z_0.device).manual_seed(seed))
    return to_uint8(x_t.clamp(-1, 1))[0], decode_latents(pipe, z_t)[0]


def forward_process_strip(pipe, image, timesteps: Sequence[int] = (0, 100, 250, 500, 750, 999), seed: int = 0):
    """Two rows over t: x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps on the pixels, and the same on the
    VAE latents z_0 (decoded to look at). Returns (PIL grid, {t: alpha_bar_t})."""
    from diffusion_lab.viz import image_grid

    schedule = schedule_of(pipe)
    pixels, latents, labels = [], [], []
    for t in timesteps:
        x_t, z_t = noised_views(pipe, image, int(t), seed)
        pixels.append(x_t)
        latents.append(z_t)
        labels.append(f"t={int(t)}")
    grid = image_grid(pixels + latents, columns=len(timesteps), labels=labels * 2, row_labels=["pixels x_t", "latents z_t (decoded)"], scale=2)
    return grid, {int(t): float(schedule.alpha_bar(int(t))) for t in timesteps}


def strength_sweep(
    pipe,
    image,
    source_prompt: str,
    target_prompt: str,
    strengths: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0),
    num_seeds: int = 3,
    num_steps: int = 50,
    guidance_scale: float | None = None,
    seed: int = 0,
    source_scene=None,
    target_scene=None,
    progress: bool = False,
):
    """Naive editing at each strength, `num_seeds` noise draws each, with the TARGET prompt (an edit) and with the
    SOURCE prompt (noising then denoising: does the image come back?). One batched naive_noising_edit per strength.

    Returns dict(rows=[per strength: psnr of edits and of round trips to the input (dB), and, given the scenes,
    the analyzer's edit success and layout-kept rates], edits=[uint8 per strength, (num_seeds, H, W, 3)],
    round_trips=[same]).
    """
    from diffusion_lab.metrics import psnr
    from diffusion_lab.naive_noising import naive_noising_edit

    guidance_scale = resolve_guidance(pipe, guidance_scale)

    reference = np.array(image.convert("RGB"))
    rows, edits, round_trips = [], [], []
    for strength in strengths:
        generator = torch.Generator(pipe.unet.device).manual_seed(seed)  # noise is drawn where the latents are
        images = naive_noising_edit(
            pipe, [image] * (2 * num_seeds), [target_prompt] * num_seeds + [source_prompt] * num_seeds,
            strength=float(strength), num_steps=num_steps, guidance_scale=guidance_scale, generator=generator,
            output_type="uint8", progress=progress,
        )  # (2 * num_seeds, H, W, 3)
        edited, back = images[:num_seeds], images[num_seeds:]
        row = {
            "strength": float(strength),
            "psnr_edit_to_input": float(np.mean(psnr(edited, np.repeat(reference[None], len(edited), 0)))),
            "psnr_round_trip_to_input": float(np.mean(psnr(back, np.repeat(reference[None], len(back), 0)))),
        }
        if source_scene is not None and target_scene is not None:
            scores = score_scene_edit(edited, source_scene, target_scene)
            row["edit_success"] = float(np.mean([s["edited"] for s in scores]))
            row["layout_kept"] = float(np.mean([s["layout_kept"] for s in scores]))
        rows.append(row)
        edits.append(edited)
        round_trips.append(back)
    return {"rows": rows, "edits": edits, "round_trips": round_trips}


def sweep_figure(image, sweep: dict, which: str = "edits"):
    """Input, then one column per strength; one row per noise seed."""
    from diffusion_lab.viz import image_grid

    per_strength = sweep[which]
    strengths = [row["strength"] for row in sweep["rows"]]
    num_seeds = len(per_strength[0])
    pictures, labels = [], []
    for seed_index in range(num_seeds):
        pictures.append(np.asarray(image.convert("RGB")))
        labels.append("input")
        for strength, images in zip(strengths, per_strength):
            pictures.append(images[seed_index])
            labels.append(f"s={strength:g}")
    return image_grid(pictures, columns=len(strengths) + 1, labels=labels, scale=2)


def tradeoff_figure(sweep: dict):
    """The lecture's trade-off: edit success rises with strength while the input's layout and pixels are lost."""
    from diffusion_lab.viz import line_plot

    rows = sweep["rows"]
    x = [row["strength"] for row in rows]
    series = {}
    if "edit_success" in rows[0]:
        series["edit done (analyzer)"] = [row["edit_success"] for row in rows]
        series["layout kept (analyzer)"] = [row["layout_kept"] for row in rows]
    series["round trip PSNR / 40 dB"] = [min(row["psnr_round_trip_to_input"], 40.0) / 40.0 for row in rows]
    return line_plot(x, series, xlabel="strength (fraction of the steps re-run)", ylabel="rate / scaled PSNR",
                     title="naive editing: too little noise vs too much")


def sweep_table(sweep: dict) -> str:
    return markdown_table(sweep["rows"])


# ----------------------------------------------------------------------------------------------------------
# Panels
# ----------------------------------------------------------------------------------------------------------


class ForwardProcessPanel(Panel):
    """A slider over t shows x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, in pixels and in latents.
    Cheap (one VAE decode), so it updates on release of the slider; no Run button."""

    def __init__(self, pipe, image, t: int = 250, seed: int = 0):
        import ipywidgets as widgets

        super().__init__()
        self.pipe, self.image = pipe, image
        schedule = schedule_of(pipe)
        self.t = slider("noise level t", int(t), 0, schedule.num_train_timesteps - 1, 1, integer=True,
                        layout=widgets.Layout(width="480px"))
        self.seed = widgets.IntText(value=seed, description="noise seed", layout=widgets.Layout(width="160px"))
        self.info = widgets.HTML()
        self.pixels = ImageView(description="x_t (pixels)")
        self.latents = ImageView(description="z_t (latents, decoded)")
        self.source = ImageView(description="x_0")
        self.source.show(image)
        for control in (self.t, self.seed):
            control.observe(lambda _change: self.run(), names="value")
        self.widget = widgets.VBox([
            widgets.HTML("<b>Forward process q(x_t | x_0)</b>"),
            widgets.HBox([self.t, self.seed]), self.info,
            widgets.HBox([self.source.widget, self.pixels.widget, self.latents.widget]), self.progress.widget,
        ])
        self.run()

    def compute(self) -> None:
        t = int(self.t.value)
        alpha_bar = float(schedule_of(self.pipe).alpha_bar(t))
        self.progress.start(1, f"noising to t={t}")
        x_t, z_t = noised_views(self.pipe, self.image, t, int(self.seed.value))
        self.pixels.show(x_t)
        self.latents.show(z_t)
        self.info.value = (
            f"alpha_bar_t = {alpha_bar:.4f}: x_t = {np.sqrt(alpha_bar):.3f} x_0 + {np.sqrt(1 - alpha_bar):.3f} eps"
        )


class NaiveEditPanel(Panel):
    """Naive editing: noise the image to a strength, then denoise with a new prompt (Run button)."""

    def __init__(self, pipe, image, source_prompt: str, target_prompt: str, strength: float = 0.6,
                 num_steps: int = 50, guidance_scale: float | None = None, seed: int = 0):
        import ipywidgets as widgets

        super().__init__()
        guidance_scale = resolve_guidance(pipe, guidance_scale)
        self.pipe, self.image, self.source_prompt = pipe, image, source_prompt
        text_layout = widgets.Layout(width="520px")
        self.prompt = widgets.Text(value=target_prompt, description="new prompt", layout=text_layout)
        self.strength = slider("strength", float(strength), 0.0, 1.0, 0.05)
        self.steps = slider("steps S", int(num_steps), 5, 100, 5, integer=True)
        self.guidance = slider("guidance w", float(guidance_scale), 1.0, 15.0, 0.5)
        self.seed = widgets.IntText(value=seed, description="noise seed", layout=widgets.Layout(width="160px"))
        self.button.description = "Run edit"
        self.source = ImageView(description="input x_0")
        self.noised = ImageView(description="noised z_t (decoded)")
        self.result = ImageView(description="edited")
        self.source.show(image)
        self.widget = widgets.VBox([
            widgets.HTML(f"<b>Naive editing</b> (input caption: <i>{source_prompt}</i>)"),
            self.prompt, widgets.HBox([self.strength, self.steps]), widgets.HBox([self.guidance, self.seed]),
            widgets.HBox([self.button, self.progress.widget]),
            widgets.HBox([self.source.widget, self.noised.widget, self.result.widget]), self.log,
        ])

    def compute(self) -> None:
        from diffusion_lab.metrics import psnr
        from diffusion_lab.naive_noising import naive_noising_edit, noise_image_to_strength

        from diffusion_lab.generation import prompt_list

        prompt_list(self.prompt.value)  # an empty prompt: a clear error before any work
        strength, steps = float(self.strength.value), int(self.steps.value)
        self.progress.start(2, f"noising to strength {strength:g} and denoising")
        noised = noise_image_to_strength(self.pipe, self.image, strength, steps,
                                         generator=torch.Generator(self.pipe.unet.device).manual_seed(int(self.seed.value)))
        self.noised.show(noised.preview[0], f"t = {noised.t} (alpha_bar_t = {noised.alpha_bar_t:.3f})")
        self.progress.advance()
        edited = naive_noising_edit(
            self.pipe, self.image, self.prompt.value, strength=strength, num_steps=steps,
            guidance_scale=float(self.guidance.value), generator=torch.Generator(self.pipe.unet.device).manual_seed(int(self.seed.value)),
            output_type="uint8", progress=False,
        )[0]
        value = float(psnr(edited, np.array(self.image.convert("RGB"))))
        self.result.show(edited, f"PSNR to the input: {value:.1f} dB")
