"""Lab 3 panels and experiments: DDIM inversion (encode, decode), its error against S and guidance, and the repair
of its failure under guidance by null-text and negative-prompt inversion.

    ceiling = vae_ceiling(pipe, images)                                    # the best any inversion can do
    rows, recs = steps_sweep(pipe, images, prompts, steps=(10, 20, 50))   # DDIM Table 2 in the shapes world
    rows = guidance_sweep(pipe, images, prompts, guidances=(1, 3, 7.5))    # DDIM breaks, the others do not
    comparison = method_comparison(pipe, images, prompts, guidance_scale=7.5, target_prompts=...)
    InversionPanel(pipe, image, prompt)                                    # method, S, w, edit prompt, Run

Inversions come from diffusion_lab.inversion.invert (through common.cached_inversion: computed once per
image and setting), reconstructions from inversion.reconstruct, errors from diffusion_lab.metrics.
"""

from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from diffusion_lab.shapes.edits import SHAPE_SWAPS, swap_shape  # noqa: F401  (lab 3's edit prompts)

from .common import ImageView, Panel, cached_inversion, markdown_table, slider

# DDIM paper (Song et al. 2021), Table 2: reconstruction MSE per dimension on CIFAR10 ([0, 1] pixels), eta = 0.
DDIM_TABLE2 = {10: 0.014, 20: 0.0065, 50: 0.0023, 100: 0.0009, 200: 0.0004, 500: 0.0001, 1000: 0.0001}
# (method for invert, guidance the inversion is made for or None = the sampling guidance, label, short label)
METHODS = {
    "ddim_pivot": ("ddim", 1.0, "DDIM inverted at w=1", "DDIM pivot"),
    "ddim": ("ddim", None, "DDIM inverted at w", "DDIM at w"),
    "null_text": ("null_text", None, "null-text", "null-text"),
    "negative_prompt": ("negative_prompt", None, "negative-prompt", "neg-prompt"),
    "fixed_point": ("fixed_point", None, "fixed-point", "fixed-point"),
    "direct": ("direct", None, "direct (source rectified)", "direct"),
}


def _uint8(images) -> np.ndarray:
    return np.stack([np.asarray(image.convert("RGB")) for image in images])


def vae_ceiling(pipe, images) -> dict:
    """Encode then decode, no diffusion: the reconstruction every latent inversion is bounded by."""
    from diffusion_lab.latents import vae_round_trip
    from diffusion_lab.metrics import mse, psnr

    inputs = _uint8(images)
    decoded = vae_round_trip(pipe, list(images))
    return {"mse": float(np.mean(mse(decoded, inputs))), "psnr": float(np.mean(psnr(decoded, inputs))), "images": decoded}


def invert_and_reconstruct(pipe, images, prompts, key: str, num_steps: int, guidance_scale: float,
                           target_prompts=None, inner_steps: int | None = None, progress: bool = False) -> dict:
    """One method of METHODS at sampling guidance w: (cached) inversion, reconstruction, optional prompt-swap edit.

    Returns dict(reconstruction uint8 (B, H, W, 3), edit (or None), inversion, seconds of the inversion)."""
    from diffusion_lab.inversion import reconstruct
    from diffusion_lab.models.defaults import inversion_guidance as default_inversion_guidance

    method, inversion_guidance = METHODS[key][:2]
    inversion_guidance = guidance_scale if inversion_guidance is None else inversion_guidance
    if method in ("negative_prompt", "direct"):  # the w = 1 pivot whatever w is: one inversion serves every w
        inversion_guidance = default_inversion_guidance(method, pipe)
    options = {"inner_steps": inner_steps} if (method == "null_text" and inner_steps) else {}
    start = time.perf_counter()
    inversion = cached_inversion(pipe, list(images), list(prompts), method, num_steps, inversion_guidance,
                                 progress=progress, **options)
    seconds = time.perf_counter() - start
    reconstruction = reconstruct(pipe, inversion, guidance_scale=guidance_scale, output_type="uint8", progress=progress)
    edit = None
    if target_prompts is not None:
        edit = reconstruct(pipe, inversion, prompt=list(target_prompts), guidance_scale=guidance_scale,
                           output_type="uint8", progress=progress)
    return {"reconstruction": reconstruction, "edit": edit, "inversion": inversion, "seconds": seconds}


def _errors(reconstruction, inputs, vae_images) -> dict:
    from diffusion_lab.metrics import mse, psnr

    return {
        "mse": float(np.mean(mse(reconstruction, inputs))),
        "psnr": float(np.mean(psnr(reconstruction, inputs))),
        "mse_vs_vae": float(np.mean(mse(reconstruction, vae_images))),
    }


def steps_sweep(pipe, images, prompts, steps: Sequence[int] = (10, 20, 50, 100), guidance_scale: float = 1.0,
                vae_images=None) -> tuple[list[dict], dict]:
    """DDIM inversion + reconstruction at guidance w for each S: errors against the input and against the VAE round
    trip (the inversion's own error), with DDIM's Table 2 (CIFAR10, pixel-space model) beside it."""
    inputs = _uint8(images)
    vae_images = vae_ceiling(pipe, images)["images"] if vae_images is None else vae_images
    rows, reconstructions = [], {}
    for num_steps in steps:
        result = invert_and_reconstruct(pipe, images, prompts, "ddim", int(num_steps), guidance_scale)
        reconstructions[int(num_steps)] = result["reconstruction"]
        rows.append({"S": int(num_steps), **_errors(result["reconstruction"], inputs, vae_images),
                     "CIFAR10 mse (paper)": DDIM_TABLE2.get(int(num_steps), "")})
    return rows, reconstructions


def guidance_sweep(pipe, images, prompts, guidances: Sequence[float] = (1.0, 2.0, 3.5, 5.0, 7.5), num_steps: int = 50,
                   keys: Sequence[str] = ("ddim_pivot", "ddim", "negative_prompt"), vae_images=None) -> list[dict]:
    """Reconstruction PSNR (dB, against the input) for each method and sampling guidance w."""
    inputs = _uint8(images)
    vae_images = vae_ceiling(pipe, images)["images"] if vae_images is None else vae_images
    rows = []
    for key in keys:
        row = {"method": METHODS[key][2]}
        for w in guidances:
            result = invert_and_reconstruct(pipe, images, prompts, key, num_steps, float(w))
            row[f"w={w:g}"] = _errors(result["reconstruction"], inputs, vae_images)["psnr"]
        rows.append(row)
    return rows


def guidance_figure(rows: list[dict], vae_psnr: float | None = None):
    from diffusion_lab.viz import line_plot

    columns = [c for c in rows[0] if c.startswith("w=")]
    x = [float(c[2:]) for c in columns]
    series = {row["method"]: [row[c] for c in columns] for row in rows}
    if vae_psnr is not None:
        series["VAE round trip (ceiling)"] = [vae_psnr] * len(x)
    return line_plot(x, series, xlabel="guidance w", ylabel="reconstruction PSNR (dB)",
                     title="inversion under classifier-free guidance")


def method_comparison(pipe, images, prompts, guidance_scale: float = 7.5, num_steps: int = 50,
                      keys: Sequence[str] = ("ddim_pivot", "ddim", "null_text", "negative_prompt"),
                      target_prompts=None, inner_steps: int | None = None, vae=None) -> dict:
    """Every method at guidance w, side by side: rows (errors, seconds), pictures (input, VAE, reconstructions and,
    with target prompts, the prompt-swap edits of each inversion)."""
    from diffusion_lab.viz import image_grid

    inputs = _uint8(images)
    vae = vae_ceiling(pipe, images) if vae is None else vae
    rows = [{"method": "VAE round trip", "mse": vae["mse"], "psnr": vae["psnr"], "mse_vs_vae": 0.0, "seconds": 0.0}]
    pictures = [list(inputs), list(vae["images"])]
    labels = ["input", "VAE"]
    edits, edit_labels = [], []
    for key in keys:
        result = invert_and_reconstruct(pipe, images, prompts, key, num_steps, guidance_scale, target_prompts, inner_steps)
        rows.append({"method": METHODS[key][2], **_errors(result["reconstruction"], inputs, vae["images"]),
                     "seconds": result["seconds"]})
        pictures.append(list(result["reconstruction"]))
        labels.append(METHODS[key][3])
        if result["edit"] is not None:
            edits.append(list(result["edit"]))
            edit_labels.append("edit " + METHODS[key][3])
    columns = pictures + edits
    column_labels = labels + edit_labels
    grid = [columns[c][r] for r in range(len(inputs)) for c in range(len(columns))]
    figure = image_grid(grid, columns=len(columns), labels=column_labels * len(inputs), scale=2)
    return {"rows": rows, "figure": figure}


def wrong_basin_example(pipe, image, prompt: str, num_steps: int = 50) -> dict:
    """DDIM and fixed-point inversion of one image at w = 1, each sampled back: where DDIM's approximation
    eps(z_{t-1}, t) ~ eps(z_t, t) carries the sample to another image and solving each step exactly does not.

    Returns dict(rows={"VAE" | "DDIM" | "fixed-point": {"psnr", "objects"}}, figure (one row of pictures))."""
    from diffusion_lab.metrics import psnr
    from diffusion_lab.shapes import analyze

    from .common import image_row

    source = _uint8([image])
    pictures = {"VAE": vae_ceiling(pipe, [image])["images"][0]}
    for name, key in (("DDIM", "ddim"), ("fixed-point", "fixed_point")):
        pictures[name] = invert_and_reconstruct(pipe, [image], [prompt], key, num_steps, 1.0)["reconstruction"][0]
    rows = {name: {"psnr": round(float(np.mean(psnr(picture[None], source))), 1),
                   "objects": ", ".join(f"{o.colour} {o.shape}" for o in analyze(picture).objects)}
            for name, picture in pictures.items()}
    figure = image_row([source[0], *pictures.values()], ["input", *(f"{k} {v['psnr']:.1f} dB" for k, v in rows.items())], 4)
    return {"rows": rows, "figure": figure}


def rows_markdown(rows: list[dict], digits: int = 4) -> str:
    return markdown_table(rows, digits=digits)


# ----------------------------------------------------------------------------------------------------------
# Panel
# ----------------------------------------------------------------------------------------------------------


class InversionPanel(Panel):
    """Invert the image with a method at (S, w), reconstruct it, and optionally sample an edit prompt from the same
    inversion. Inversions are cached: changing only the edit prompt (or rerunning) does not invert again."""

    def __init__(self, pipe, image, prompt: str, target_prompt: str = "", method: str = "ddim",
                 num_steps: int = 50, guidance_scale: float = 7.5, inner_steps: int | None = None):
        import ipywidgets as widgets

        super().__init__()
        self.pipe, self.image = pipe, image
        wide = widgets.Layout(width="520px")
        self.prompt = widgets.Text(value=prompt, description="source prompt", layout=wide)
        self.target = widgets.Text(value=target_prompt, description="edit prompt", layout=wide,
                                   placeholder="(optional) sample this prompt from the same inversion")
        self.method = widgets.Dropdown(options=[(METHODS[k][2], k) for k in METHODS], value=method if method in METHODS else "ddim",
                                       description="method")
        self.steps = slider("steps S", int(num_steps), 5, 200, 5, integer=True)
        self.guidance = slider("guidance w", float(guidance_scale), 1.0, 10.0, 0.5)
        if inner_steps is None:  # the model's default loop (6 for shapes-tiny, the paper's 10 for Stable Diffusion)
            from diffusion_lab.inversion import null_text_settings_for

            inner_steps = null_text_settings_for(pipe).inner_steps
        self.inner_steps = slider("null-text inner steps", int(inner_steps), 1, 20, 1, integer=True)
        self.button.description = "Run inversion"
        self.view = ImageView(min_side=128)
        self.numbers = widgets.HTML()
        self.widget = widgets.VBox([
            widgets.HTML("<b>Inversion: encode, then decode</b>"),
            self.prompt, self.target, widgets.HBox([self.method, self.steps]),
            widgets.HBox([self.guidance, self.inner_steps]),
            widgets.HBox([self.button, self.progress.widget]), self.view.widget, self.numbers, self.log,
        ])

    def compute(self) -> None:
        from diffusion_lab.latents import vae_round_trip
        from diffusion_lab.metrics import psnr
        from diffusion_lab.viz import image_grid

        from diffusion_lab.generation import prompt_list

        prompt_list(self.prompt.value)  # the source prompt: an empty one is a clear error before any work
        key = self.method.value
        target = self.target.value.strip() or None
        self.progress.start(2, f"inverting with {METHODS[key][2]} (cached after the first run)")
        result = invert_and_reconstruct(
            self.pipe, [self.image], [self.prompt.value], key, int(self.steps.value), float(self.guidance.value),
            [target] if target else None, int(self.inner_steps.value),
        )
        self.progress.advance()
        inputs = _uint8([self.image])
        pictures = [inputs[0], vae_round_trip(self.pipe, self.image)[0], result["reconstruction"][0]]
        labels = ["input", "VAE", "reconstruction"]
        if result["edit"] is not None:
            pictures.append(result["edit"][0])
            labels.append("edit")
        self.view.show(image_grid(pictures, labels=labels, scale=2))
        value = float(psnr(result["reconstruction"][0], inputs[0]))
        self.numbers.value = (
            f"reconstruction PSNR {value:.2f} dB; inversion took {result['seconds']:.2f} s "
            f"({'from the cache' if result['seconds'] < 0.05 else 'computed'})"
        )


def method_study_figure(study: dict, inputs, vae_images, count: int):
    """The worked examples of a `studies.inversion.method_study` (its first `count` scenes): per scene the input,
    the VAE round trip, each method's reconstruction, then each method's edit (when the study made edits)."""
    from diffusion_lab.viz import image_grid

    methods = {name: m for name, m in study["methods"].items() if m["n"] >= count}
    columns = [list(inputs[:count]), list(vae_images[:count])]
    labels = ["input", "VAE"]
    for name, m in methods.items():
        columns.append(list(m["reconstructions"][:count]))
        labels.append(name)
    for name, m in methods.items():
        if "edits" in m:
            columns.append(list(m["edits"][:count]))
            labels.append("edit " + name)
    grid = [columns[c][r] for r in range(count) for c in range(len(columns))]
    return image_grid(grid, columns=len(columns), labels=labels * count, scale=2)
