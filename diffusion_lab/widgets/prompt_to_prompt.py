"""Lab 4 panels and experiments: cross-attention maps per word, and Prompt-to-Prompt's word swap, refine, reweight
and local blend, on a generated image and on an inverted real image.

    image, figure = word_maps(pipe, "a large red circle on a gray background", seed=0)
    rows, figure = run_examples(pipe, examples(source_prompt), seed=0)               # generated
    rows, figure = run_examples(pipe, examples(caption), real_image=image, inversion_method="null_text")  # real
    PromptToPromptPanel(pipe, image, caption)                                         # every knob + Run

All computation is diffusion_lab.editing's (run_edit / PromptEdit, which drive the attention controllers) and
diffusion_lab.attention.figures' (the pictures of the maps); scores come from the shapes analyzer. The panel's
edits share run_edit's source cache: a second Run on the same source (seed or inversion, steps, guidance, replacement
schedule) with another target word replays the recorded source branch and runs only the target (attention/
source_branch.py).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffusion_lab.models.defaults import inversion_guidance_for_edit, resolve_guidance
from diffusion_lab.shapes.scoring import score_edit  # noqa: F401  (the lab's scorer: lab.score_edit)

from .common import ImageView, Panel, cached_inversion, markdown_table, slider


# ----------------------------------------------------------------------------------------------------------
# Attention maps
# ----------------------------------------------------------------------------------------------------------


def word_maps(pipe, prompt: str, seed: int = 0, num_steps: int = 50, guidance_scale: float | None = None,
              resolution: int | None = None, progress: bool = False):
    """Generate `prompt` with an AttentionStore and draw each word's cross-attention map averaged over all steps
    (and the layers of one map size) over the image: the lecture's figure. Returns (uint8 image, PIL figure)."""
    from diffusion_lab.attention import AttentionStore
    from diffusion_lab.attention.figures import word_attention_figure
    from diffusion_lab.generation import text_to_image

    store = AttentionStore(num_prompts=1, store_self_attention=False)
    result = text_to_image(pipe, [prompt], num_steps=num_steps, guidance_scale=guidance_scale, seed=seed,
                           controller=store, progress=progress)
    figure = word_attention_figure(store, pipe.tokenizer, prompt, resolution, image=result.images[0], size=96)
    return result.images[0], figure


def word_maps_by_size(pipe, prompt: str, seed: int = 0, num_steps: int = 50, guidance_scale: float | None = None,
                      progress: bool = False):
    """Like word_maps, but one row per map size on one shared scale (which layers place the words), with each
    shape and colour word's mass inside the analyzer's (dilated) object mask relative to a uniform map.
    `prompt`: a shapes-world caption. Returns (PIL figure, rows for a table: one per (size, word); none when the
    analyzer finds no object)."""
    from scipy import ndimage

    from diffusion_lab.attention import AttentionStore
    from diffusion_lab.attention.figures import word_attention_by_size_figure
    from diffusion_lab.attention.maps import cross_attention_per_word, mass_ratio_inside
    from diffusion_lab.generation import text_to_image
    from diffusion_lab.shapes import analyze, parse_caption

    store = AttentionStore(num_prompts=1, store_self_attention=False)
    result = text_to_image(pipe, [prompt], num_steps=num_steps, guidance_scale=guidance_scale, seed=seed,
                           controller=store, progress=progress)
    image = result.images[0]
    figure = word_attention_by_size_figure(store, pipe.tokenizer, prompt, image=image, size=96)
    analysis = analyze(image)
    rows = []
    if analysis.objects:
        mask = ndimage.binary_dilation(analysis.objects[0].mask, iterations=2)  # (H, W) of the image
        wanted = parse_caption(prompt).objects[0]
        words = [w for w in (wanted.shape, wanted.colour) if w]
        for side in sorted({max(s) for s in store.available_resolutions(is_cross=True)}, reverse=True):
            for word, word_map in cross_attention_per_word(store, pipe.tokenizer, prompt, side):
                if word in words:
                    rows.append({"map size": f"{side}x{side}", "word": word,
                                 "mass on object / uniform": mass_ratio_inside(word_map, mask)})
    return figure, rows


# ----------------------------------------------------------------------------------------------------------
# Edits: the lecture's kind of examples in the shapes world
# ----------------------------------------------------------------------------------------------------------


def _swap(prompt: str, old: str, new: str) -> str:
    words = prompt.split()
    if old not in words:
        raise ValueError(f"{old!r} is not a word of {prompt!r}")
    return " ".join(new if w == old else w for w in words)


def examples(source_prompt: str, shape_swap: tuple[str, str] = ("circle", "square"),
             colour_swap: tuple[str, str] = ("red", "blue"), refine_word: tuple[str, str] = ("circle", "large"),
             reweight: tuple[str, float] = ("red", 0.2)) -> list[dict]:
    """Edits of one source prompt, each a dict of diffusion_lab.editing.PromptEdit fields plus a title:
    word swap of the shape and of the colour, refine (a word added before `refine_word[0]`, the source lacking it),
    reweight of a word, and both word swaps with local blend. Entries whose words are not in the prompt are left out."""
    words = source_prompt.split()
    result = []
    old, new = shape_swap
    if old in words:
        result.append({"title": f"{old} -> {new}", "source_prompt": source_prompt,
                       "target_prompts": [_swap(source_prompt, old, new)], "edit": "replace"})
    old, new = colour_swap
    if old in words:
        result.append({"title": f"{old} -> {new}", "source_prompt": source_prompt,
                       "target_prompts": [_swap(source_prompt, old, new)], "edit": "replace"})
    anchor, added = refine_word
    if anchor in words and added in words:  # refine: the source without the word, the target with it
        shorter = " ".join(w for w in words if w != added)
        shorter = shorter.replace("an ", "a ", 1) if shorter.startswith("an ") else shorter
        result.append({"title": f"refine: +{added}", "source_prompt": shorter, "target_prompts": [source_prompt],
                       "edit": "refine"})
    word, scale = reweight
    if word in words:
        result.append({"title": f"reweight {word} x{scale:g}", "source_prompt": source_prompt,
                       "target_prompts": [source_prompt], "edit": "reweight", "reweight": {word: float(scale)}})
    old, new = shape_swap
    if old in words:
        result.append({"title": f"{old} -> {new} + local blend", "source_prompt": source_prompt,
                       "target_prompts": [_swap(source_prompt, old, new)], "edit": "replace",
                       "blend_words": [old, new]})
    old, new = colour_swap
    if old in words:
        result.append({"title": f"{old} -> {new} + local blend", "source_prompt": source_prompt,
                       "target_prompts": [_swap(source_prompt, old, new)], "edit": "replace",
                       "blend_words": [old, new]})
    return result


def run_examples(pipe, edits: Sequence[dict], seed: int = 0, num_steps: int = 50, guidance_scale: float | None = None,
                 real_image=None, inversion_method: str = "null_text", inversion_guidance: float | None = None,
                 inversion_options: dict | None = None, baseline: bool = True, progress: bool = False):
    """Run each edit with P2P and (baseline) without it, from the same x_T: the seed's noise, or, with `real_image`,
    an inversion of it with the edit's source prompt (`inversion_method` at `inversion_guidance`, default
    models.defaults.inversion_guidance_for_edit: 1 for ddim, the sampling guidance otherwise; cached, so edits that
    share a source prompt share an inversion).

    Returns (rows: per run "no P2P" / "P2P", target_matched, iou and outside_psnr of shapes.scoring.edit_scores
    (the edit against the source or reconstruction); PIL figure with a row per edit: [input,] source or
    reconstruction, without P2P, with P2P)."""
    from diffusion_lab.shapes.scoring import edit_scores
    from diffusion_lab.editing import PromptEdit, run_edit
    from diffusion_lab.viz import image_grid

    guidance_scale = resolve_guidance(pipe, guidance_scale)
    rows, pictures, labels = [], [], []
    for spec in edits:
        spec = dict(spec)
        title = spec.pop("title", spec["target_prompts"][0])
        edit = PromptEdit.from_dict(spec)
        edit.check(pipe.tokenizer)
        if real_image is None:
            kwargs = dict(seed=seed, num_steps=num_steps, guidance_scale=guidance_scale, progress=progress)
        else:
            inversion = cached_inversion(
                pipe, real_image, edit.source_prompt, inversion_method, num_steps,
                inversion_guidance_for_edit(inversion_method, guidance_scale) if inversion_guidance is None
                else inversion_guidance, progress=progress,
                **(inversion_options or {}),
            )
            kwargs = dict(inversion=inversion, guidance_scale=guidance_scale, progress=progress)
        with_p2p = run_edit(pipe, edit, **kwargs)
        row_pictures = ([np.asarray(real_image.convert("RGB"))] if real_image is not None else []) + [with_p2p.source_image]
        row_labels = (["input"] if real_image is not None else []) + ["source" if real_image is None else "reconstr."]
        if baseline:
            plain = run_edit(pipe, PromptEdit.from_dict({**spec, "attention_control": False}), **kwargs)
            row_pictures.append(plain.edited_images[0])
            row_labels.append("no P2P")
        row_pictures.append(with_p2p.edited_images[0])
        row_labels.append(title)  # image_grid wraps it
        pictures.extend(row_pictures)
        labels.extend(row_labels)
        row = {"edit": title}
        runs = ([("no P2P", plain)] if baseline else []) + [("P2P", with_p2p)]
        for name, result in runs:  # the numbers of the lab's generated edits (shapes.scoring.edit_scores)
            scores = edit_scores(result.source_image, result.edited_images[0], edit.target_prompts[0])
            row.update({f"{name} {k}": v for k, v in scores.items()})
        rows.append(row)
    columns = len(pictures) // max(1, len(edits))
    return rows, image_grid(pictures, columns=columns, labels=labels, scale=2)


def reweight_strip(pipe, prompt: str, word: str, scales: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0), seed: int = 0,
                   num_steps: int = 50, guidance_scale: float | None = None, inversion=None, progress: bool = False):
    """The same image with one word's attention scaled by each factor (P2P's reweighting), left to right."""
    from diffusion_lab.editing import PromptEdit, run_edit
    from diffusion_lab.viz import image_grid

    guidance_scale = resolve_guidance(pipe, guidance_scale)
    pictures, labels = [], []
    for scale in scales:
        edit = PromptEdit(prompt, [prompt], edit="reweight", reweight={word: float(scale)})
        kwargs = dict(seed=seed, num_steps=num_steps) if inversion is None else dict(inversion=inversion)
        result = run_edit(pipe, edit, guidance_scale=guidance_scale, progress=progress, **kwargs)
        pictures.append(result.edited_images[0])
        labels.append(f"{word} x{scale:g}")
    return image_grid(pictures, labels=labels, scale=2)


def rows_markdown(rows: list[dict]) -> str:
    return markdown_table(rows, digits=2)


# ----------------------------------------------------------------------------------------------------------
# Panel
# ----------------------------------------------------------------------------------------------------------


class PromptToPromptPanel(Panel):
    """Every knob of a Prompt-to-Prompt edit, on a generated image (a seed) or on a real image (inverted once, then
    cached: a second edit of the same image only samples). Shows [input,] source, the edit, optionally the edit
    without P2P, and the target's word maps."""

    def __init__(self, pipe, image, image_prompt: str, source_prompt: str | None = None, target_prompt: str = "",
                 seed: int = 0, num_steps: int = 50, guidance_scale: float | None = None, inversion_method: str = "negative_prompt",
                 inner_steps: int | None = None):
        import ipywidgets as widgets

        super().__init__()
        guidance_scale = resolve_guidance(pipe, guidance_scale)
        self.pipe, self.image, self.image_prompt = pipe, image, image_prompt
        source_prompt = source_prompt or image_prompt
        wide = widgets.Layout(width="560px")
        self.source_kind = widgets.ToggleButtons(options=["generated", "real image"], value="generated",
                                                 description="source")
        self.seed = widgets.IntText(value=seed, description="seed", layout=widgets.Layout(width="160px"))
        self.source_prompt = widgets.Text(value=source_prompt, description="source prompt", layout=wide)
        self.target_prompt = widgets.Text(value=target_prompt or source_prompt, description="target prompt", layout=wide)
        self.edit = widgets.Dropdown(options=["replace", "refine", "reweight"], value="replace", description="edit")
        self.reweight_word = widgets.Text(value="", description="reweight word", placeholder="e.g. red",
                                          layout=widgets.Layout(width="260px"))
        self.reweight_scale = slider("scale", 2.0, 0.0, 5.0, 0.1)
        self.cross_steps = slider("cross-attn steps", 0.8, 0.0, 1.0, 0.05)
        self.self_steps = slider("self-attn steps", 0.4, 0.0, 1.0, 0.05)
        self.blend_words = widgets.Text(value="", description="local blend words", placeholder="e.g. circle square",
                                        layout=widgets.Layout(width="360px"))
        from diffusion_lab.attention import DEFAULT_MASK_STYLE, MASK_STYLES

        self.blend_mask = widgets.Dropdown(options=list(MASK_STYLES), value=DEFAULT_MASK_STYLE,  # LocalBlend's
                                           description="blend mask", layout=widgets.Layout(width="200px"))
        self.compare = widgets.Checkbox(value=True, description="also without P2P")
        self.method = widgets.Dropdown(options=["negative_prompt", "null_text", "direct", "ddim", "fixed_point"],
                                       value=inversion_method, description="inversion")
        self.steps = slider("steps S", int(num_steps), 10, 100, 5, integer=True)
        self.guidance = slider("guidance w", float(guidance_scale), 1.0, 10.0, 0.5)
        self.inner_steps = None if inner_steps is None else int(inner_steps)  # None: the model's default loop
        self.button.description = "Run edit"
        self.images = ImageView(min_side=128, description="")
        self.maps = ImageView(min_side=96, description="target's word maps (all steps)")
        self.numbers = widgets.HTML()
        self.last_result = None
        self.widget = widgets.VBox([
            widgets.HTML("<b>Prompt-to-Prompt</b>"),
            widgets.HBox([self.source_kind, self.seed, self.method]),
            self.source_prompt, self.target_prompt,
            widgets.HBox([self.edit, self.reweight_word, self.reweight_scale]),
            widgets.HBox([self.cross_steps, self.self_steps]),
            widgets.HBox([self.blend_words, self.blend_mask, self.compare]),
            widgets.HBox([self.steps, self.guidance]),
            widgets.HBox([self.button, self.progress.widget]),
            self.images.widget, self.numbers, self.maps.widget, self.log,
        ])

    def edit_dict(self) -> dict:
        """The PromptEdit the controls describe."""
        reweight = None
        if self.reweight_word.value.strip():
            reweight = {self.reweight_word.value.strip(): float(self.reweight_scale.value)}
        blend = self.blend_words.value.replace(",", " ").split() or None
        return {"source_prompt": self.source_prompt.value.strip(), "target_prompts": [self.target_prompt.value.strip()],
                "edit": self.edit.value, "cross_replace_steps": float(self.cross_steps.value),
                "self_replace_steps": float(self.self_steps.value), "reweight": reweight, "blend_words": blend,
                "blend_mask_style": self.blend_mask.value}

    def compute(self) -> None:
        from diffusion_lab.attention.figures import word_attention_figure
        from diffusion_lab.editing import PromptEdit, run_edit
        from diffusion_lab.viz import image_grid

        from diffusion_lab.generation import prompt_list

        spec = self.edit_dict()
        prompt_list([spec["source_prompt"], *spec["target_prompts"]])  # empty prompts: a clear error first
        edit = PromptEdit.from_dict(spec)
        edit.check(self.pipe.tokenizer)  # clear errors before any UNet call
        real = self.source_kind.value == "real image"
        runs = 1 + int(self.compare.value) + int(real)
        self.progress.start(runs, "inverting (cached after the first run) and editing" if real else "editing")
        guidance = float(self.guidance.value)
        if real:
            options = {"inner_steps": self.inner_steps} if self.method.value == "null_text" and self.inner_steps else {}
            inversion = cached_inversion(self.pipe, self.image, edit.source_prompt, self.method.value,
                                         int(self.steps.value), inversion_guidance_for_edit(self.method.value, guidance),
                                         **options)
            self.progress.advance()
            kwargs = dict(inversion=inversion, guidance_scale=guidance)
        else:
            kwargs = dict(seed=int(self.seed.value), num_steps=int(self.steps.value), guidance_scale=guidance)
        result = run_edit(self.pipe, edit, progress=False, **kwargs)
        self.progress.advance()
        pictures = ([np.asarray(self.image.convert("RGB"))] if real else []) + [result.source_image]
        labels = (["input"] if real else []) + ["reconstruction" if real else "source"]
        if self.compare.value:
            plain = run_edit(self.pipe, PromptEdit.from_dict({**spec, "attention_control": False}), progress=False, **kwargs)
            self.progress.advance()
            pictures.append(plain.edited_images[0])
            labels.append("without P2P")
        pictures.append(result.edited_images[0])
        labels.append("P2P edit")
        self.images.show(image_grid(pictures, labels=labels, scale=2))
        self.maps.show(word_attention_figure(result.controller, self.pipe.tokenizer, edit.target_prompts[0],
                                             prompt_index=1, image=result.edited_images[0], size=64))
        score = score_edit(result.source_image, result.edited_images[0], edit.target_prompts[0])
        self.numbers.value = (f"analyzer: target attributes matched {score['target_matched']:.2f}, layout kept "
                              f"{score['layout_kept']:.0f}; PSNR to the source {score['psnr_to_source']:.1f} dB")
        self.last_result = result
