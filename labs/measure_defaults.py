"""Measure candidate default examples of the labs with the package's own scorers (how the defaults were chosen).

    python labs/measure_defaults.py lab1 --steps 20 --seeds 4          # eight candidate edits, strength sweep
    python labs/measure_defaults.py lab2 --samples 48                  # Table 1 at S = 10, 20, 50 with bootstrap FD
    python labs/measure_defaults.py lab3 --scene-seeds $(seq 0 59)     # DDIM inversion at w = 1: which scenes miss
    python labs/measure_defaults.py lab4 --steps 20 --parts swap refine reweight blend blend2

Prints one line per candidate (one scene or seed each: how the worked examples were chosen). The claims the labs
teach are measured over many scenes and seeds by `python pipelines/claims.py` (rates and means with intervals).
"""

from __future__ import annotations

import argparse
import json
import time

LAB1_CANDIDATES = [
    # (object, background, edit kind, edit value)
    ({"shape": "circle", "colour": "red", "size": "large"}, "gray", "shape", "square"),
    ({"shape": "circle", "colour": "red", "size": "large"}, "gray", "shape", "triangle"),
    ({"shape": "square", "colour": "blue", "size": "large"}, "gray", "shape", "circle"),
    ({"shape": "circle", "colour": "red", "size": "small"}, "gray", "size", "large"),
    ({"shape": "square", "colour": "green", "size": "large"}, "white", "size", "small"),
    ({"shape": "circle", "colour": "red", "size": "large"}, "gray", "colour", "blue"),
    ({"shape": "circle", "colour": "yellow", "size": "large"}, "black", "background", "white"),
    ({"shape": "triangle", "colour": "blue", "size": "large"}, "gray", "shape", "square"),
]


def lab1(args) -> None:
    from diffusion_lab.shapes import caption, edit_scene
    from diffusion_lab.widgets import common
    from diffusion_lab.widgets import naive_noising_panel as lab

    common.configure_threads(1)
    pipe = common.get_pipeline("shapes-tiny")
    candidates = [LAB1_CANDIDATES[i] for i in args.candidates] if args.candidates else LAB1_CANDIDATES
    for obj, background, kind, value in candidates:
        for scene_seed in args.scene_seeds:
            start = time.perf_counter()
            image, source_prompt, scene = common.source_scene(pipe, scene_seed, objects=[obj], background=background)
            target_scene = edit_scene(scene, kind, value).target
            sweep = lab.strength_sweep(pipe, image, source_prompt, caption(target_scene), args.strengths, args.seeds,
                                       args.steps, 5.0, 0, source_scene=scene, target_scene=target_scene)
            cells = " ".join(f"s={r['strength']:.1f}:{r['edit_success']:.2f}/{r['layout_kept']:.2f}" for r in sweep["rows"])
            print(f"{source_prompt!r} -> {kind}={value} scene {scene_seed}  (edit/layout) {cells}  "
                  f"[{time.perf_counter() - start:.0f} s]", flush=True)


def lab2(args) -> None:
    """Table 1 at small S with bootstrap error bars (the lab's check cell does the same)."""
    import numpy as np

    from diffusion_lab.quality import feature_matrix, frechet_distance
    from diffusion_lab.shapes import random_scene, render
    from diffusion_lab.widgets import common
    from diffusion_lab.widgets import posterior_panel as lab

    common.configure_threads(1)
    pipe = common.get_pipeline("shapes-tiny")
    start = time.perf_counter()
    table = lab.table1(pipe, args.table_steps, num_samples=args.samples, guidance_scale=1.0, seed=0,
                       reference_count=args.references)
    print(f"table1: {time.perf_counter() - start:.0f} s", flush=True)
    rng = np.random.default_rng(0 + 10_000)
    reference = feature_matrix([render(random_scene(rng, num_objects=1)).image for _ in range(args.references)])
    boot = np.random.default_rng(1)
    for s_index, num_steps in enumerate(table["steps"]):
        for label in table["fd"]:
            features = feature_matrix(table["samples"][(num_steps, label)])
            draws = [frechet_distance(features[boot.integers(0, len(features), len(features))], reference)
                     for _ in range(args.bootstrap)]
            print(f"S={num_steps:4d} {label:14s} FD {table['fd'][label][s_index]:.3f}  bootstrap {np.mean(draws):.3f} "
                  f"+- {np.std(draws):.3f}", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


LAB4_SWAPS = [
    # (source prompt, old word, new word)
    ("a large red circle on a gray background", "circle", "square"),
    ("a large red circle on a gray background", "circle", "triangle"),
    ("a large blue square on a gray background", "square", "circle"),
    ("a large green triangle on a white background", "triangle", "square"),
    ("a large yellow square on a black background", "square", "cross"),
    ("a large red circle on a gray background", "red", "blue"),
    ("a large blue square on a gray background", "blue", "red"),
    ("a large blue square on a gray background", "square", "triangle"),
]


from diffusion_lab.course.measures import main_object_mask, object_iou  # noqa: E402
from diffusion_lab.course.measures import outside_edit_psnr as background_psnr_of  # noqa: E402


def lab4(args) -> None:
    """Word swaps (IoU of the main object, source vs edit, with and without P2P), refine, reweight, local blend."""
    import numpy as np

    from diffusion_lab.editing import PromptEdit, run_edit
    from diffusion_lab.widgets import common
    from diffusion_lab.shapes.scoring import score_edit

    common.configure_threads(1)
    pipe = common.get_pipeline("shapes-tiny")
    run = dict(num_steps=args.steps, guidance_scale=5.0, progress=False)
    if "swap" in args.parts:
        swaps = [LAB4_SWAPS[i] for i in args.candidates] if args.candidates else LAB4_SWAPS
        for source, old, new in swaps:
            target = source.replace(old, new)
            for seed in args.image_seeds:
                spec = {"source_prompt": source, "target_prompts": [target], "edit": "replace"}
                p2p = run_edit(pipe, PromptEdit.from_dict(spec), seed=seed, **run)
                plain = run_edit(pipe, PromptEdit.from_dict({**spec, "attention_control": False}), seed=seed, **run)
                blend = run_edit(pipe, PromptEdit.from_dict({**spec, "blend_words": [old, new]}), seed=seed, **run)
                cells = []
                for name, result in (("noP2P", plain), ("P2P", p2p), ("P2P+blend", blend)):
                    score = score_edit(result.source_image, result.edited_images[0], target)
                    cells.append(f"{name}: IoU {object_iou(result.edited_images[0], result.source_image):.2f} "
                                 f"match {score['target_matched']:.2f} psnr {score['psnr_to_source']:.1f} "
                                 f"bg {background_psnr_of(result.edited_images[0], result.source_image):.1f}")
                print(f"{old}->{new} seed {seed} [{source}] " + " | ".join(cells), flush=True)
    if "blend" in args.parts:  # local blend under a short injection (the layout is left free after 20%)
        for source, old, new in [("a large blue square on a gray background", "blue", "red"),
                                 ("a large blue square on a gray background", "square", "circle")]:
            target = source.replace(old, new)
            for seed in args.image_seeds:
                cells = []
                for blend in (None, [old, new]):
                    spec = {"source_prompt": source, "target_prompts": [target], "edit": "replace",
                            "cross_replace_steps": 0.2, "self_replace_steps": 0.0, "blend_words": blend}
                    result = run_edit(pipe, PromptEdit.from_dict(spec), seed=seed, **run)
                    score = score_edit(result.source_image, result.edited_images[0], target)
                    cells.append(f"{'blend' if blend else 'no blend'}: IoU "
                                 f"{object_iou(result.edited_images[0], result.source_image):.2f} match "
                                 f"{score['target_matched']:.2f} bg {background_psnr_of(result.edited_images[0], result.source_image):.1f}")
                print(f"short injection {old}->{new} seed {seed}: " + " | ".join(cells), flush=True)
    if "blend2" in args.parts:  # local blend on two objects: does the other object stay?
        for source, old, new, words in [
                ("a large red circle and a small blue square on a gray background", "red", "green", ["circle"]),
                ("a large red circle and a small blue square on a gray background", "circle", "triangle", ["circle", "triangle"]),
                ("a large yellow square and a small red circle on a gray background", "yellow", "blue", ["square"])]:
            target = source.replace(old, new)
            for seed in args.image_seeds:
                cells = []
                for blend in (None, words):
                    spec = {"source_prompt": source, "target_prompts": [target], "edit": "replace", "blend_words": blend}
                    result = run_edit(pipe, PromptEdit.from_dict(spec), seed=seed, **run)
                    score = score_edit(result.source_image, result.edited_images[0], target)
                    cells.append(f"{'blend' if blend else 'no blend'}: match {score['target_matched']:.2f} outside-edit "
                                 f"{background_psnr_of(result.edited_images[0], result.source_image):.1f} dB")
                print(f"two objects {old}->{new} seed {seed}: " + " | ".join(cells), flush=True)
    if "refine" in args.parts:
        for source, target in [("a red circle on a gray background", "a small red circle on a gray background"),
                               ("a red circle on a gray background", "a large red circle on a gray background"),
                               ("a circle on a gray background", "a blue circle on a gray background"),
                               ("a large circle on a gray background", "a large green circle on a gray background"),
                               ("a large red circle", "a large red circle on a white background")]:
            for seed in args.image_seeds:
                spec = {"source_prompt": source, "target_prompts": [target], "edit": "refine"}
                p2p = run_edit(pipe, PromptEdit.from_dict(spec), seed=seed, **run)
                before = score_edit(p2p.source_image, p2p.source_image, target)
                after = score_edit(p2p.source_image, p2p.edited_images[0], target)
                print(f"refine seed {seed} {source!r} -> {target!r}: source matches target {before['target_matched']:.2f}, "
                      f"edit {after['target_matched']:.2f}, IoU {object_iou(p2p.edited_images[0], p2p.source_image):.2f}",
                      flush=True)
    if "reweight" in args.parts:
        from diffusion_lab.quality import FEATURE_NAMES, shapes_features
        for prompt, word, feature in [("a large red circle on a gray background", "red", "share_red"),
                                      ("a large red circle on a gray background", "large", None),
                                      ("a small red circle on a gray background", "small", None),
                                      ("a large red circle on a gray background", "circle", None)]:
            for seed in args.image_seeds:
                values = []
                for scale in args.scales:
                    spec = {"source_prompt": prompt, "target_prompts": [prompt], "edit": "reweight",
                            "reweight": {word: float(scale)}}
                    image = run_edit(pipe, PromptEdit.from_dict(spec), seed=seed, **run).edited_images[0]
                    mask = main_object_mask(image)
                    area = 0.0 if mask is None else float(mask.mean())
                    share = float(shapes_features(image)[FEATURE_NAMES.index(feature)]) if feature else float("nan")
                    values.append(f"x{scale:g}: area {area:.3f} share {share:.3f}")
                print(f"reweight {word} seed {seed} [{prompt}] " + " ".join(values), flush=True)


def lab3(args) -> None:
    """Lab 3's "wrong basin" scene: DDIM inversion at w = 1 and S = --steps, sampled back, against the VAE round trip,
    for each scene seed (one line per scene, the gap in dB last; the lab shows one that misses)."""
    import numpy as np

    from diffusion_lab.metrics import psnr
    from diffusion_lab.widgets import common
    from diffusion_lab.widgets.inversion_panel import _uint8, invert_and_reconstruct, vae_ceiling

    common.configure_threads(1)
    pipe = common.get_pipeline("shapes-tiny")
    for seed in args.scene_seeds:
        image, prompt, _ = common.source_scene(pipe, seed, num_objects=None)
        source = _uint8([image])
        vae = float(np.mean(psnr(vae_ceiling(pipe, [image])["images"][0][None], source)))
        ddim = invert_and_reconstruct(pipe, [image], [prompt], "ddim", args.steps, 1.0)["reconstruction"][0]
        ddim = float(np.mean(psnr(ddim[None], source)))
        print(f"scene {seed} [{prompt}] VAE {vae:.1f} dB, DDIM {ddim:.1f} dB, gap {vae - ddim:.1f} dB", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lab", choices=["lab1", "lab2", "lab3", "lab4"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--candidates", type=int, nargs="*", help="indices into the candidate list (default: all)")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--scene-seeds", type=int, nargs="*", default=[3])
    parser.add_argument("--strengths", type=float, nargs="*", default=[0.1, 0.2, 0.3, 0.5, 0.7, 1.0])
    parser.add_argument("--samples", type=int, default=48)
    parser.add_argument("--table-steps", type=int, nargs="*", default=[10, 20, 50])
    parser.add_argument("--references", type=int, default=128)
    parser.add_argument("--bootstrap", type=int, default=50)
    parser.add_argument("--parts", nargs="*", default=["swap", "refine", "reweight"])
    parser.add_argument("--image-seeds", type=int, nargs="*", default=[0, 1])
    parser.add_argument("--scales", type=float, nargs="*", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    args = parser.parse_args()
    {"lab1": lab1, "lab2": lab2, "lab3": lab3, "lab4": lab4}[args.lab](args)


if __name__ == "__main__":
    main()
