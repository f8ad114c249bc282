"""Measure a text-to-image model of the shapes world (default: the built-in shapes-tiny).

    python pipelines/evaluate_model.py [--model shapes-tiny] [--one-object 200] [--two-object 100]

What it measures (every number comes from the analyzer on generated images, not from the loss):
1. one-object captions with every attribute named: accuracy of shape, colour, size, background;
2. two-object captions: object count and shape-colour pairing (both objects found with the right
   shape AND colour, in either order);
3. VAE round trip on held-out renders: PSNR and the analyzer's accuracy on the reconstructions,
   overall and for small objects; and how LOCAL the latents are, which Prompt-to-Prompt's local blend
   relies on: for pairs of renders that differ in one object (colour, shape or size), the change of
   the latents outside that object's cells (mean |z_A - z_B| there, in units of the latent std; 0 for
   a local encoder), and the PSNR of decoding z_A with z_B pasted into the object's cells, against
   render B (a local blend of a perfect edit), with the share of such decodes below 25 dB;
4. attention where it belongs: for one-object captions, the cross-attention map of the shape word
   and of the colour word, averaged over steps and over the 16x16 and 8x8 layers, and the share of
   its mass inside the object's (dilated) mask, divided by the mask's share of the image (what a
   uniform map would hold). 1.0 = no better than uniform; the target is >= 2.0;
5. positions (--positions N): one-object captions naming the object's grid cell ("a red circle at the
   top left on a white background"), cells drawn uniformly from the nine: the share of objects found in
   the named cell (chance 1/9), per cell; and two-object captions with and without their position
   phrases, for the same scenes and seeds: pairing, both objects in their named cells, and the share of
   images with more than two objects;
6. speed: median wall time of a 50-step DDIM sample with guidance at batch 1 (--speed-runs).
The last line reads `min_attribute_accuracy=<value>`, the lowest one-object attribute accuracy.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from diffusion_lab.attention import AttentionStore
from diffusion_lab.attention.maps import mass_ratio_inside, upsample_map
from diffusion_lab.attention.tokens import word_token_indices
from diffusion_lab.generation import initial_noise, text_to_image
from diffusion_lab.models import load_pipeline
from diffusion_lab.shapes import COLUMNS, ROWS, analyze, caption, match_objects, random_scene
from diffusion_lab.latents import image_size
from diffusion_lab.training import dilate_cells, images_to_tensor, locality_pairs, make_dataset, vae_psnr
from diffusion_lab.viz import image_grid

ATTRIBUTES = ("shape", "colour", "size", "background")


def one_object_study(pipe, count: int, steps: int, guidance: float, seed: int, batch: int, out: Path) -> dict:
    rng = np.random.default_rng(seed)
    scenes = [random_scene(rng, num_objects=1) for _ in range(count)]
    correct = {a: 0 for a in ATTRIBUTES}
    per_shape: dict[str, list[int]] = {}
    per_colour: dict[str, list[int]] = {}
    colour_confusions: dict[str, int] = {}  # "wanted -> seen" for the wrong colours
    mass = {"shape": [], "colour": []}  # per word: list of {"all": ratio, "16x16": ratio, ...}
    examples = []
    for start in range(0, count, batch):
        chunk = scenes[start : start + batch]
        prompts = [caption(s) for s in chunk]
        store = AttentionStore(num_prompts=len(prompts), store_self_attention=False)
        x_T = initial_noise(pipe, len(prompts), seed=seed + start)
        result = text_to_image(pipe, prompts, num_steps=steps, guidance_scale=guidance, x_T=x_T, controller=store, progress=False)
        for i, (image, scene, prompt) in enumerate(zip(result.images, chunk, prompts)):
            analysis = analyze(image)
            want = scene.objects[0]
            correct["background"] += analysis.background == scene.background
            found = analysis.objects[0] if analysis.objects else None
            for attribute in ("shape", "colour", "size"):
                correct[attribute] += found is not None and getattr(found, attribute) == getattr(want, attribute)
            per_shape.setdefault(want.shape, []).append(int(found is not None and found.shape == want.shape))
            per_colour.setdefault(want.colour, []).append(int(found is not None and found.colour == want.colour))
            if found is None or found.colour != want.colour:
                key = f"{want.colour} -> {found.colour if found is not None else 'no object'}"
                colour_confusions[key] = colour_confusions.get(key, 0) + 1
            if found is not None:
                object_mask = ndimage.binary_dilation(found.mask, iterations=2)
                for role, word in (("shape", want.shape), ("colour", want.colour)):
                    mass[role].append(attention_mass_ratio(store, pipe.tokenizer, prompt, word, i, object_mask))
            if len(examples) < 16:
                examples.append(image)
    image_grid(examples, columns=8, scale=2).save(out / "one_object_samples.png")
    result = {a: correct[a] / count for a in ATTRIBUTES}
    result["per_shape"] = {k: float(np.mean(v)) for k, v in sorted(per_shape.items())}
    result["per_colour"] = {k: float(np.mean(v)) for k, v in sorted(per_colour.items())}
    result["colour_confusions"] = dict(sorted(colour_confusions.items(), key=lambda item: -item[1]))
    result["attention_mass_ratio"] = {
        role: {key: float(np.mean([r[key] for r in ratios])) for key in ratios[0]} if ratios else {"all": float("nan")}
        for role, ratios in mass.items()
    }
    return result


def attention_mass_ratio(store, tokenizer, prompt: str, word: str, prompt_index: int, object_mask: np.ndarray) -> dict:
    """(mass of the word's map inside the mask) / (mask's share of the image), maps averaged over steps.

    Returns {"all": maps averaged over every cross-attention layer (16x16, 8x8 and the 4x4 middle), "16x16":
    those layers only, "8x8": ..., "4x4": ...}: which layers place words matters for Prompt-to-Prompt, so each
    map size is reported too."""
    columns = word_token_indices(tokenizer, prompt, word)
    maps, result = [], {}
    for resolution in store.available_resolutions(is_cross=True):
        word_map = store.average_cross_attention(resolution, prompt_index=prompt_index)[..., columns].sum(-1)  # (h, w)
        result[f"{resolution[0]}x{resolution[1]}"] = mass_ratio_inside(word_map, object_mask)
        upsampled = upsample_map(word_map, object_mask.shape)
        maps.append(upsampled / max(float(upsampled.sum()), 1e-12))
    result["all"] = mass_ratio_inside(torch.stack(maps).mean(0), object_mask)
    return result


def two_object_study(pipe, count: int, steps: int, guidance: float, seed: int, batch: int, out: Path) -> dict:
    rng = np.random.default_rng(seed + 1)
    scenes = [random_scene(rng, num_objects=2) for _ in range(count)]
    counts = pairing = colours = shapes = 0
    examples = []
    for start in range(0, count, batch):
        chunk = scenes[start : start + batch]
        prompts = [caption(s) for s in chunk]
        x_T = initial_noise(pipe, len(prompts), seed=seed + 7 + start)
        result = text_to_image(pipe, prompts, num_steps=steps, guidance_scale=guidance, x_T=x_T, progress=False)
        for image, scene in zip(result.images, chunk):
            analysis = analyze(image)
            counts += len(analysis.objects) == 2
            found = {(o.shape, o.colour) for o in analysis.objects}
            want = {(o.shape, o.colour) for o in scene.objects}
            pairing += want <= found
            colours += {c for _, c in want} <= {c for _, c in found}
            shapes += {s for s, _ in want} <= {s for s, _ in found}
            if len(examples) < 16:
                examples.append(image)
    image_grid(examples, columns=8, scale=2).save(out / "two_object_samples.png")
    return {"object_count": counts / count, "pairing": pairing / count, "both_colours": colours / count, "both_shapes": shapes / count}


def _generate(pipe, prompts: list[str], steps: int, guidance: float, seed: int, batch: int) -> list:
    """Images for `prompts`, batch by batch; the initial noise of batch k depends only on (seed, k)."""
    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        x_T = initial_noise(pipe, len(chunk), seed=seed + start)
        images += list(text_to_image(pipe, chunk, num_steps=steps, guidance_scale=guidance, x_T=x_T, progress=False).images)
    return images


def position_study(pipe, count: int, steps: int, guidance: float, seed: int, batch: int, out: Path) -> dict:
    """Item 5 of the module docstring: does the model put objects where the caption says?"""
    rng = np.random.default_rng(seed + 2)
    cells = [(row, column) for row in ROWS for column in COLUMNS]
    wanted = [cells[i] for i in rng.integers(len(cells), size=count)]
    scenes = [random_scene(rng, objects=[{"position": cell}]) for cell in wanted]
    images = _generate(pipe, [caption(s, include_position=True) for s in scenes], steps, guidance, seed + 11, batch)
    hits: dict[str, list[int]] = {f"{row} {column}": [] for row, column in cells}
    for image, cell in zip(images, wanted):
        found = analyze(image).objects
        hits[f"{cell[0]} {cell[1]}"].append(int(len(found) == 1 and found[0].position == cell))
    image_grid(images[:16], labels=[f"{r} {c}" for r, c in wanted[:16]], columns=8, scale=2).save(out / "position_samples.png")
    result = {"one_object": float(np.mean(sum(hits.values(), []))),
              "one_object_per_cell": {k: float(np.mean(v)) if v else float("nan") for k, v in hits.items()}}

    two = [random_scene(rng, num_objects=2) for _ in range(count)]
    for named in (False, True):
        images = _generate(pipe, [caption(s, include_position=named) for s in two], steps, guidance, seed + 13, batch)
        pairing = in_cells = more = 0
        extra = []  # images with more than two objects: what they are is easier seen than counted
        for image, scene in zip(images, two):
            found = analyze(image).objects
            more += len(found) > 2
            if len(found) > 2:
                extra.append(image)
            pairing += {(o.shape, o.colour) for o in scene.objects} <= {(o.shape, o.colour) for o in found}
            in_cells += all(any((f.shape, f.colour, f.position) == (o.shape, o.colour, o.position) for f in found)
                            for o in scene.objects)
        key = "two_object_named" if named else "two_object_unnamed"
        result[key] = {"pairing": pairing / count, "both_in_named_cells": in_cells / count, "more_than_two_objects": more / count}
        if named:
            image_grid(images[:16], columns=8, scale=2).save(out / "position_two_object_samples.png")
        if extra:
            image_grid(extra[:16], columns=8, scale=2).save(
                out / f"position_two_object_{'named' if named else 'unnamed'}_more_than_two.png")
    return result


@torch.no_grad()
def vae_study(pipe, count: int, seed: int) -> dict:
    images, scenes = make_dataset(count, seed=seed + 50_000)
    x = images_to_tensor(images).to(pipe.vae.device)
    psnr = vae_psnr(pipe.vae, x)
    reconstructions = []
    for i in range(0, len(x), 64):
        y = pipe.vae.decode(pipe.vae.encode(x[i : i + 64]).latent_dist.mean).sample
        reconstructions.append(((y.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy())
    reconstructions = np.concatenate(reconstructions)
    right = {"all": [], "small": [], "large": []}
    for image, scene in zip(reconstructions, scenes):
        analysis = analyze(image)
        for true, found in zip(scene.objects, match_objects(analysis, scene.objects)):
            ok = found is not None and (found.shape, found.colour, found.size) == (true.shape, true.colour, true.size)
            right["all"].append(ok)
            right[true.size].append(ok)
    return {"psnr_db": psnr, **{f"analyzer_accuracy_{k}": float(np.mean(v)) for k, v in right.items()}}


@torch.no_grad()
def latent_locality_study(pipe, count: int, seed: int) -> dict:
    """Pairs of renders A, B differing in one object; the object's latent cells (every cell its mask
    touches in A or B, dilated by 0-2 cells at random, as local blend's masks are) are where B's
    latents are pasted into A's. See item 3 of the module docstring."""
    rng = np.random.default_rng(seed + 60_000)
    xa, xb, cells, radii = locality_pairs(count, rng, size=image_size(pipe), latent_size=pipe.unet.config.sample_size)
    mask = torch.stack([dilate_cells(c[None], r)[0] for c, r in zip(cells, radii)])  # (N, 1, side, side)
    za, zb = pipe.vae.encode(xa).latent_dist.mean, pipe.vae.encode(xb).latent_dist.mean
    outside = (~mask).expand_as(za)
    change = ((za - zb).abs()[outside].mean() / za.std()).item()
    decoded = pipe.vae.decode(torch.where(mask, zb, za)).sample.clamp(-1, 1)
    mse = ((decoded - xb) / 2).pow(2).flatten(1).mean(1)
    psnr = (10 * torch.log10(1 / mse.clamp_min(1e-10))).numpy()
    return {"pairs": count, "outside_change": change, "pasted_psnr_median_db": float(np.median(psnr)),
            "pasted_below_25db": float((psnr < 25).mean())}


def speed_study(pipe, runs: int, steps: int, guidance: float) -> dict:
    prompt = ["a large red circle on a gray background"]
    text_to_image(pipe, prompt, num_steps=5, guidance_scale=guidance, progress=False)  # warm up
    times = []
    for i in range(runs):
        start = time.perf_counter()
        text_to_image(pipe, prompt, num_steps=steps, guidance_scale=guidance, seed=i, progress=False)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "runs": runs, "threads": torch.get_num_threads()}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--one-object", type=int, default=200)
    parser.add_argument("--two-object", type=int, default=100)
    parser.add_argument("--positions", type=int, default=100, help="captions per position study (0: skip it)")
    parser.add_argument("--vae-images", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--speed-runs", type=int, default=7)
    parser.add_argument("--seed", type=int, default=777)
    parser.add_argument("--out", default="outputs/evaluate_model")
    parser.add_argument("--device", default=None, help="cuda / mps / cpu (default: the best there is)")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float32 for the built-in model, float16 for a folder on a GPU")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pipe = load_pipeline(args.model, device=args.device, dtype=args.dtype and getattr(torch, args.dtype))
    if args.positions:  # measure what the model does with position words, also where its card says it ignores them
        pipe.tokenizer.untrained_words = ((), "")
    results = {"model": args.model, "steps": args.steps, "guidance": args.guidance}
    if args.one_object:
        results["one_object"] = one_object_study(pipe, args.one_object, args.steps, args.guidance, args.seed, args.batch, out)
    if args.two_object:
        results["two_object"] = two_object_study(pipe, args.two_object, args.steps, args.guidance, args.seed, args.batch, out)
    if args.positions:
        results["positions"] = position_study(pipe, args.positions, args.steps, args.guidance, args.seed, args.batch, out)
    if args.vae_images:
        results["vae"] = vae_study(pipe, args.vae_images, args.seed)
        results["latent_locality"] = latent_locality_study(pipe, args.vae_images, args.seed)
    if args.speed_runs:
        results["speed"] = speed_study(pipe, args.speed_runs, 50, args.guidance)
    lines = [f"Model {args.model}: {args.one_object} one-object / {args.two_object} two-object captions, {args.steps} DDIM steps, guidance {args.guidance}"]
    one = results.get("one_object")
    if one is not None:
        lines += [
            "",
            "| one-object attribute | accuracy |", "|---|---|",
            *[f"| {a} | {one[a]:.3f} |" for a in ATTRIBUTES],
            "",
            "| shape | accuracy |", "|---|---|", *[f"| {k} | {v:.3f} |" for k, v in one["per_shape"].items()],
            "",
            "| colour | accuracy |", "|---|---|", *[f"| {k} | {v:.3f} |" for k, v in one["per_colour"].items()],
            "",
            "most frequent colour errors (wanted -> seen): "
            + (", ".join(f"{k} x{v}" for k, v in list(one["colour_confusions"].items())[:5]) or "none"),
            "",
            f"attention mass inside the object / uniform: shape word {one['attention_mass_ratio']['shape']['all']:.2f}, colour word {one['attention_mass_ratio']['colour']['all']:.2f} (target >= 2)",
            *[f"  {size} layers only: shape word {one['attention_mass_ratio']['shape'][size]:.2f}, colour word {one['attention_mass_ratio']['colour'][size]:.2f}"
              for size in one["attention_mass_ratio"]["shape"] if size != "all"],
        ]
    if "two_object" in results:
        two = results["two_object"]
        lines.append(f"two objects: count {two['object_count']:.3f}, pairing {two['pairing']:.3f}, both colours {two['both_colours']:.3f}, both shapes {two['both_shapes']:.3f}")
    if "positions" in results:
        where = results["positions"]
        lines.append(f"positions: one object in its named cell {where['one_object']:.3f} (chance 0.111); per cell "
                     + ", ".join(f"{k} {v:.2f}" for k, v in where["one_object_per_cell"].items()))
        for key, label in (("two_object_unnamed", "without"), ("two_object_named", "with")):
            two = where[key]
            lines.append(f"two objects {label} position phrases: pairing {two['pairing']:.3f}, both in their named cells "
                         f"{two['both_in_named_cells']:.3f}, more than two objects {two['more_than_two_objects']:.3f}")
    if "vae" in results:
        vae = results["vae"]
        lines.append(f"VAE round trip: PSNR {vae['psnr_db']:.2f} dB, analyzer accuracy {vae['analyzer_accuracy_all']:.3f} (small {vae['analyzer_accuracy_small']:.3f}, large {vae['analyzer_accuracy_large']:.3f})")
        local = results["latent_locality"]
        lines.append(f"latent locality ({local['pairs']} pairs differing in one object): latents outside the object change by "
                     f"{local['outside_change']:.3f} latent std; B pasted into A's object cells decodes at a median "
                     f"{local['pasted_psnr_median_db']:.2f} dB against B, {100 * local['pasted_below_25db']:.1f}% below 25 dB")
    if "speed" in results:
        lines.append(f"speed: 50-step DDIM sample with guidance, batch 1: median {results['speed']['median_s']:.3f} s over {results['speed']['runs']} runs ({results['speed']['threads']} threads)")
    if one is not None:
        lines.append(f"min_attribute_accuracy={min(one[a] for a in ATTRIBUTES):.3f}")
    text = "\n".join(lines)
    (out / "report.md").write_text(text + "\n")
    (out / "metrics.json").write_text(json.dumps(results, indent=1) + "\n")
    print(text)
    return results


if __name__ == "__main__":
    main()
