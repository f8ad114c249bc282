"""Benchmark Prompt-to-Prompt on the shapes world, where every edit has a ground truth.

    python pipelines/bench_p2p.py [--model shapes-tiny] [--cases 30] [--steps 50] [--guidance 5]
                                  [--kinds colour shape background add reweight] [--modes generated real]
                                  [--out outputs/bench_p2p] [--quick]

Each case is a random one-object scene and its caption ("a large red circle on a gray background"), edited
five ways (diffusion_lab.shapes.edit_scene: the same scene, one attribute changed):
    colour      word swap of the colour           (edit="replace")
    shape       word swap of the shape            (edit="replace")
    background  word swap of the background       (edit="replace")
    add         a colour word added to a caption that had none, "a large circle ..." -> "a large red
                circle ..." (edit="refine")
    reweight    the colour swap with the new colour word's attention scaled by --reweight-scale
                (edit="reweight": the source's maps, the new word emphasised)
in two modes:
    generated   the source is generated from the source caption with a seed; the ground truth of an edit is
                the analysed source scene (what the analyzer sees in the generated image) with the attribute
                changed, rendered
    real        the source is the RENDER of the scene, inverted (--inversion, null-text by default); the
                ground truth is the render of the edited scene
and three methods: P2P (diffusion_lab.editing), "no control" (the same seed or the same inversion, only the
prompt changed) and "naive noising" (the source image noised to --strength, then sampled with the target);
with --local-blend a fourth for the word swaps, "P2P + local blend" (P2P's LocalBlend around the replaced and the
new word: the source's latents are kept outside those words' maps).

Measures, per (mode, kind, method), averaged over the cases:
    IoU         mask IoU of the edited object (the analyzer's, best overlap) with the source object
                (real: the render's mask; generated: the analyzer's mask in the source image)
    IoU ceiling the IoU of the source object with the TRUE edited object: what a perfect edit scores in the
                column before (1 for colour and background edits; below 1 for a shape swap, whose new shape
                covers other pixels: circle -> star about 0.5)
    IoU truth   mask IoU of the edited object with the true edited object (same place, new attribute): 1 for a
                perfect edit of any kind, so shape swaps can be judged too
    kept PSNR   PSNR against the source image where nothing should change: outside the (dilated) source and
                target object masks, or, for background edits, inside the (eroded) object
    success     share of edits where the analyzer sees the new attribute (colour, shape or background)
    GT PSNR / GT SSIM   closeness to the ground-truth edited image
The table is printed and written to <out>/bench_p2p.md, with per-case numbers in results.json and pictures of
the first scene: examples_<mode>.png (a row per kind: source, the unedited source row of the sampler -- for a
real image its reconstruction --, ground truth, P2P, no control, naive noising) and attention_<mode>.png
(P2P's word maps of the word-swap run, a row per prompt).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from diffusion_lab.editing import PromptEdit, auto_self_replace_resolution, run_edit
from diffusion_lab.inversion import METHODS as INVERSION_METHODS
from diffusion_lab.latents import image_size
from diffusion_lab.metrics import mask_iou, psnr
from diffusion_lab.progress import progress_bar
from diffusion_lab.shapes import (
    ObjectDescription,
    Scene,
    SceneDescription,
    ShapeObject,
    analyze,
    caption,
    describe,
    edit_scene,
    random_scene,
    render,
)
from diffusion_lab.shapes.scene import SIZES
from diffusion_lab.shapes.scoring import score_against_truth as score  # one edit's numbers (see its docstring)

KINDS = ("colour", "shape", "background", "add", "reweight")
MODES = ("generated", "real")
METHODS = ("P2P", "no control", "naive noising")
LOCAL_BLEND = "P2P + local blend"  # with --local-blend, for word swaps only
SCORED_METHODS = (*METHODS, LOCAL_BLEND)  # the order of the table's rows
WORD_SWAP_KINDS = ("colour", "shape")  # the acceptance test: a word swap keeps the object in place


@dataclass
class Case:
    """One edit of one scene: prompts, the changed attribute, and the true edited scene (real mode)."""

    index: int
    kind: str
    scene: Scene
    target_scene: Scene
    source_prompt: str
    target_prompt: str
    new_value: str


def make_cases(scene: Scene, index: int, kinds, rng: np.random.Generator) -> list[Case]:
    obj = scene.objects[0]
    colour_edit = edit_scene(scene, "colour", rng=rng)
    edits = {
        "colour": colour_edit,
        "shape": edit_scene(scene, "shape", rng=rng),
        "background": edit_scene(scene, "background", rng=rng),
        "add": edit_scene(scene, "colour", rng=rng),
        "reweight": colour_edit,
    }
    colourless = describe(SceneDescription((ObjectDescription(obj.shape, None, obj.size),), scene.background))
    cases = []
    for kind in kinds:
        edit = edits[kind]
        source_prompt = colourless if kind == "add" else caption(scene)
        cases.append(Case(index, kind, scene, edit.target, source_prompt, caption(edit.target), edit.new))
    return cases


def p2p_settings(args) -> dict:
    return dict(cross_replace_steps=args.cross_replace, self_replace_steps=args.self_replace,
                self_replace_max_resolution=args.self_replace_max_resolution)


def swapped_words(case: Case) -> tuple[str, str]:
    """The word a colour or shape swap replaces and the word it puts in (local blend's words)."""
    old = getattr(case.scene.objects[0], case.kind)
    return old, case.new_value


def prompt_edit_for(kind: str, source_prompt: str, targets: list[str], new_values: list[str], args) -> PromptEdit:
    settings = p2p_settings(args)
    if kind == "add":
        return PromptEdit(source_prompt, targets, "refine", **settings)
    if kind == "reweight":
        return PromptEdit(source_prompt, targets, "reweight", reweight={new_values[0]: args.reweight_scale}, **settings)
    return PromptEdit(source_prompt, targets, "replace", **settings)


# ---------------------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------------------


def scene_from_analysis(analysis) -> Scene | None:
    """The one-object scene the analyzer sees (None when it sees no object): the generated image's 'truth'."""
    if not analysis.objects:
        return None
    found = analysis.objects[0]
    radius = SIZES[found.size]
    x, y = (float(np.clip(value, radius, 1 - radius)) for value in (found.x, found.y))
    return Scene(analysis.background, (ShapeObject(found.shape, found.colour, found.size, x, y),))


def with_new_value(scene: Scene, kind: str, value: str) -> Scene:
    if kind == "background":
        return scene.replace(background=value)
    attribute = "shape" if kind == "shape" else "colour"
    return Scene(scene.background, (scene.objects[0].replace(**{attribute: value}),))


# ---------------------------------------------------------------------------------------------------------
# Running the methods
# ---------------------------------------------------------------------------------------------------------


def run_scene(pipe, cases: list[Case], mode: str, seed: int, args, keep_pictures: bool) -> tuple[list[dict], dict]:
    """All kinds of one scene in one mode: per source prompt, one P2P run per edit type (targets batched), one
    no-control run with every target, one naive-noising batch."""
    from diffusion_lab.inversion import invert
    from diffusion_lab.naive_noising import naive_noising_edit

    size = image_size(pipe)
    records, pictures, extras = [], {}, {}
    by_source: dict[str, list[Case]] = defaultdict(list)
    for case in cases:
        by_source[case.source_prompt].append(case)
    for source_prompt, group in by_source.items():
        targets = [case.target_prompt for case in group]
        inversion = None
        if mode == "real":
            rendered = render(group[0].scene, size)
            options = {} if args.inner_steps is None else {"inner_steps": args.inner_steps}
            inversion = invert(
                pipe, rendered.image, source_prompt, method=args.inversion, num_steps=args.steps,
                guidance_scale=args.guidance, progress=False, **(options if args.inversion == "null_text" else {}),
            )
        run = dict(inversion=inversion, seed=seed, num_steps=args.steps, guidance_scale=args.guidance, progress=False)
        plain = run_edit(pipe, PromptEdit(source_prompt, targets, attention_control=False), **run)
        edited = {("no control", case.kind): plain.images[1 + i] for i, case in enumerate(group)}
        by_edit_type: dict[str, list[int]] = defaultdict(list)
        for i, case in enumerate(group):
            by_edit_type["replace" if case.kind in ("colour", "shape", "background") else case.kind].append(i)
        for edit_type, members in by_edit_type.items():
            kind = group[members[0]].kind
            p2p_edit = prompt_edit_for(
                kind, source_prompt, [targets[i] for i in members], [group[i].new_value for i in members], args
            )
            result = run_edit(pipe, p2p_edit, **run)
            for row, i in enumerate(members, start=1):
                edited[("P2P", group[i].kind)] = result.images[row]
            if keep_pictures and edit_type == "replace":
                extras["attention_result"] = result
        swaps = [i for i, case in enumerate(group) if case.kind in WORD_SWAP_KINDS]
        if args.local_blend and swaps:  # the same word swaps, the source kept outside the swapped words' maps
            blend_words = sorted({word for i in swaps for word in swapped_words(group[i])})
            blended = run_edit(pipe, PromptEdit(source_prompt, [targets[i] for i in swaps], "replace",
                                                blend_words=blend_words, **p2p_settings(args)), **run)
            for row, i in enumerate(swaps, start=1):
                edited[(LOCAL_BLEND, group[i].kind)] = blended.images[row]
        if mode == "real":
            source_image, source_mask = rendered.image, rendered.masks[0]
            extras.setdefault("reconstruction_psnr", []).append(float(psnr(plain.images[0], rendered.image)))
            # what a perfect edit could score in object IoU: the analyzer's mask of the reconstruction vs the render's
            seen = analyze(plain.images[0]).objects
            best = max((mask_iou(source_mask, o.mask) for o in seen), default=0.0)
            extras.setdefault("reconstruction_iou", []).append(best)
        else:
            source_image = plain.images[0]
            source_analysis = analyze(source_image)
            source_mask = source_analysis.objects[0].mask if source_analysis.objects else None
            analysed_scene = scene_from_analysis(source_analysis)
        generator = torch.Generator().manual_seed(seed)
        naive = naive_noising_edit(
            pipe, [source_image] * len(targets), targets, strength=args.strength, num_steps=args.steps,
            guidance_scale=args.guidance, generator=generator, output_type="uint8", progress=False,
        )
        for i, case in enumerate(group):
            edited[("naive noising", case.kind)] = naive[i]
            if mode == "real":
                truth_render = render(case.target_scene, size)
                truth = (truth_render.image, truth_render.masks[0])
            elif analysed_scene is not None:
                truth_render = render(with_new_value(analysed_scene, case.kind, case.new_value), size)
                truth = (truth_render.image, truth_render.masks[0])
            else:
                truth = None
            for method in SCORED_METHODS:
                if (method, case.kind) not in edited:
                    continue
                image = edited[(method, case.kind)]
                record = score(case.kind, case.new_value, image, source_image, source_mask, truth)
                record.update(mode=mode, kind=case.kind, method=method, case=case.index,
                              source_prompt=source_prompt, target_prompt=case.target_prompt)
                records.append(record)
            if keep_pictures:
                blank = np.full_like(source_image, 255)
                pictures[case.kind] = [source_image, plain.images[0], truth[0] if truth is not None else blank] + [
                    edited[(method, case.kind)] for method in METHODS
                ]
    extras["pictures"] = pictures
    return records, extras


# ---------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def _format(value: float, digits: int = 2) -> str:
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def summarize(records: list[dict], modes, kinds) -> tuple[str, dict]:
    lines = [
        "| mode | edit | method | n | object IoU | IoU ceiling | IoU truth | kept PSNR (dB) | success | GT PSNR (dB) | GT SSIM |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for mode in modes:
        for kind in kinds:
            for method in SCORED_METHODS:
                chosen = [r for r in records if (r["mode"], r["kind"], r["method"]) == (mode, kind, method)]
                if not chosen:
                    continue
                means = {key: _mean([r[key] for r in chosen]) for key in ("iou", "iou_ceiling", "truth_iou", "kept_psnr", "success", "gt_psnr", "gt_ssim")}
                summary[(mode, kind, method)] = means
                lines.append(
                    f"| {mode} | {kind} | {method} | {len(chosen)} | {_format(means['iou'])} | "
                    f"{_format(means['iou_ceiling'])} | {_format(means['truth_iou'])} | "
                    f"{_format(means['kept_psnr'], 1)} | {_format(means['success'])} | {_format(means['gt_psnr'], 1)} | "
                    f"{_format(means['gt_ssim'])} |"
                )
    return "\n".join(lines), summary


def requirement_met(iou: float, plain_iou: float, success: float) -> bool:
    """The issue's requirement for word swaps with P2P: mean object IoU with the source >= 0.8, clearly (> 0.05)
    above the same edits without attention control, and the new attribute seen in >= 80% of the edits."""
    return iou >= 0.8 and iou > plain_iou + 0.05 and success >= 0.8


def word_swap_verdicts(records: list[dict], modes) -> list[str]:
    """`requirement_met` for the word swaps together (colour and shape), with what a perfect edit scores, then for
    each kind of word swap on its own."""
    verdicts = []
    for mode in modes:
        def of(method, kinds):
            return [r for r in records if r["mode"] == mode and r["method"] == method and r["kind"] in kinds]

        def verdict(kinds, label) -> str | None:
            p2p, plain = of("P2P", kinds), of("no control", kinds)
            if not p2p:
                return None
            iou, plain_iou = _mean([r["iou"] for r in p2p]), _mean([r["iou"] for r in plain])
            success = _mean([r["success"] for r in p2p])
            return (
                f"{mode}, {label.format(n=len(p2p))}: P2P object IoU {_format(iou)} vs {_format(plain_iou)} without "
                f"attention control, new attribute seen in {_format(100 * success, 0)}% -> requirement (IoU >= 0.80, "
                f"clearly above no control, success >= 80%) {'MET' if requirement_met(iou, plain_iou, success) else 'NOT MET'}"
            )

        together = verdict(WORD_SWAP_KINDS, "word swaps (colour + shape, {n} edits)")
        if together is None:
            continue
        verdicts.append("- " + together)
        p2p, plain = of("P2P", WORD_SWAP_KINDS), of("no control", WORD_SWAP_KINDS)
        truth_iou, plain_truth_iou = _mean([r["truth_iou"] for r in p2p]), _mean([r["truth_iou"] for r in plain])
        ceiling = _mean([r["iou_ceiling"] for r in p2p])
        verdicts.append(
            f"  (a perfect edit scores {_format(ceiling)} in that IoU, since a swapped shape covers other pixels; "
            f"IoU with the true edited object: P2P {_format(truth_iou)} vs {_format(plain_truth_iou)} without "
            f"attention control)"
        )
        for kind in WORD_SWAP_KINDS:
            line = verdict((kind,), kind + " swaps ({n} edits)")
            if line is not None:
                verdicts.append("  - " + line)
    return verdicts


def save_pictures(extras_by_mode: dict, pipe, out: Path) -> None:
    from diffusion_lab.attention.figures import edit_attention_figure
    from diffusion_lab.viz import image_grid

    for mode, extras in extras_by_mode.items():
        pictures = extras.get("pictures", {})
        if pictures:
            images = [image for kind in pictures for image in pictures[kind]]
            labels = ["source", "source row", "truth", *METHODS] * len(pictures)
            image_grid(images, columns=3 + len(METHODS), labels=labels, row_labels=list(pictures), scale=2).save(
                out / f"examples_{mode}.png"
            )
        if "attention_result" in extras:
            edit_attention_figure(extras["attention_result"]).save(out / f"attention_{mode}.png")


def load_model(name: str):
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()  # batch logs: no loading bars
    transformers.utils.logging.disable_progress_bar()
    if name == "untrained":
        from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

        return build_untrained_pipeline(seed=0)
    from diffusion_lab.models import load_pipeline

    return load_pipeline(name, device="cpu")


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-tiny", help="shapes-tiny, a diffusers folder, or 'untrained'")
    parser.add_argument("--cases", type=int, default=30, help="scenes; each gives one case of every kind")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--out", default="outputs/bench_p2p")
    parser.add_argument("--quick", action="store_true", help="2 cases, 10 steps, 3 null-text inner steps: a smoke run")
    parser.add_argument("--seed", type=int, default=5000)
    parser.add_argument("--cross-replace", type=float, default=0.8, help="P2P cross_replace_steps")
    parser.add_argument("--self-replace", type=float, default=0.4, help="P2P self_replace_steps")
    parser.add_argument("--self-replace-max-resolution", type=int, default=None,
                        help="largest map side whose self-attention P2P injects (default: "
                             "diffusion_lab.editing.auto_self_replace_resolution of the latent side)")
    parser.add_argument("--reweight-scale", type=float, default=2.0)
    parser.add_argument("--strength", type=float, default=0.6, help="naive noising strength")
    parser.add_argument("--inversion", default="null_text", choices=INVERSION_METHODS)
    parser.add_argument("--inner-steps", type=int, default=None, help="null-text inner steps (default 10)")
    parser.add_argument("--local-blend", action="store_true",
                        help=f"also score word swaps with local blend around the swapped words ('{LOCAL_BLEND}')")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.cases, args.steps = min(args.cases, 2), min(args.steps, 10)
        args.inner_steps = args.inner_steps or 3
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    pipe = load_model(args.model)
    records, extras_by_mode, reconstruction_psnr, reconstruction_iou = [], {}, [], []
    for mode in args.modes:
        for index in progress_bar(range(args.cases), desc=f"bench_p2p {mode}"):
            rng = np.random.default_rng(args.seed + index)
            scene = random_scene(rng, num_objects=1)
            cases = make_cases(scene, index, args.kinds, rng)
            scene_records, extras = run_scene(pipe, cases, mode, args.seed + index, args, keep_pictures=index == 0)
            records += scene_records
            reconstruction_psnr += extras.get("reconstruction_psnr", [])
            reconstruction_iou += extras.get("reconstruction_iou", [])
            if index == 0:
                extras_by_mode[mode] = extras
    table, _ = summarize(records, args.modes, args.kinds)
    seconds = time.perf_counter() - start
    notes = word_swap_verdicts(records, args.modes)
    if reconstruction_psnr:
        notes.append(
            f"- real: the {args.inversion} inversion reconstructs the rendered source at "
            f"{_format(_mean(reconstruction_psnr), 1)} dB PSNR (source row without edits; the kept-PSNR ceiling); the "
            f"analyzer's object mask in the reconstruction has IoU {_format(_mean(reconstruction_iou))} with the render's "
            f"(about what a perfect colour swap can score in object IoU)"
        )
    header = (
        f"# Prompt-to-Prompt on the shapes world\n\nmodel {args.model}, {args.cases} scene(s) per mode, {args.steps} "
        f"DDIM steps, guidance {args.guidance}, cross_replace_steps {args.cross_replace}, self_replace_steps "
        f"{args.self_replace} (self-attention injected at map sides <= "
        f"{args.self_replace_max_resolution or auto_self_replace_resolution(pipe.unet.config.sample_size)}), reweight x{args.reweight_scale}, naive noising strength {args.strength}, real images "
        f"inverted with {args.inversion}; {seconds:.0f} s.\n"
    )
    report = header + "\n" + table + "\n\n" + "\n".join(notes) + "\n"
    print(report)
    (out / "bench_p2p.md").write_text(report)
    (out / "results.json").write_text(json.dumps({"settings": vars(args), "records": records}, indent=1, default=str))
    save_pictures(extras_by_mode, pipe, out)
    return report


if __name__ == "__main__":
    main()
