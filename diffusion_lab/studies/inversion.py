"""Lab 3's claims measured: how well inversions give an image back, per scene, as means and rates with intervals.

Every number is the PSNR (dB, `metrics.psnr`) of a reconstruction against the rendered input, per scene of a
sample (`scenes.scene_draws`), beside that scene's VAE round trip decode(encode(x)) -- the ceiling of any latent
inversion. The inversions are `inversion.invert` (one batch per method and setting) and `inversion.reconstruct`.

    steps_study       DDIM inversion at w = 1 for each S: mean PSNR, mean gap to the VAE, how often a scene
                      improves from the smallest to the largest S, and how often DDIM lands in another basin
                      (its gap exceeds WRONG_BASIN_DB: the sampled path drifted to another image)
    guidance_study    invert then sample at w = 1 and at the largest w: how much guidance costs, per method
                      (DDIM inverted at w = 1 and sampled at w, DDIM inverted at w, negative-prompt inversion)
    basin_study       DDIM against fixed-point inversion (each step solved exactly) at w = 1 and S: how often each
                      comes back within NEAR_CEILING_DB of the VAE round trip
    edit_friendly_study  edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024): how often the
                      reconstruction is exact (within EXACT_DB of the VAE round trip), and its noise maps' std
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..stats import mean, rate

WRONG_BASIN_DB = 5.0     # a DDIM reconstruction this far below its VAE round trip came back as another image
NEAR_CEILING_DB = 1.0    # "gives the image back": within this of the VAE round trip
EXACT_DB = 0.1           # edit-friendly: float rounding only
GUIDANCE_COST_DB = 1.0   # "guidance breaks the reconstruction": PSNR falls by more than this from w = 1 to largest w


def inputs_uint8(draws) -> np.ndarray:
    """The rendered inputs as uint8 (n, H, W, 3)."""
    return np.stack([np.asarray(d.image.convert("RGB")) for d in draws])


def psnr_per_image(images, inputs) -> np.ndarray:
    """PSNR (dB) of each image against its input, (n,); identical images (inf) count as 100 dB."""
    from ..metrics import psnr

    values = np.atleast_1d(np.asarray(psnr(np.asarray(images), inputs), dtype=np.float64))
    return np.minimum(values, 100.0)


def vae_psnr(pipe, draws) -> np.ndarray:
    """Each scene's VAE round trip PSNR (dB), (n,)."""
    from ..latents import vae_round_trip

    return psnr_per_image(vae_round_trip(pipe, [d.image for d in draws]), inputs_uint8(draws))


def reconstruction_psnr(pipe, draws, method: str, num_steps: int, invert_guidance: float,
                        sample_guidances: Sequence[float], **options) -> dict:
    """Invert every scene with its caption (`method` at `invert_guidance`, one batch), sample back at each w of
    `sample_guidances`: {w: PSNR per scene (n,)}."""
    from ..inversion import invert, reconstruct

    inversion = invert(pipe, [d.image for d in draws], [d.prompt for d in draws], method=method,
                       num_steps=int(num_steps), guidance_scale=float(invert_guidance), progress=False, **options)
    inputs = inputs_uint8(draws)
    return {float(w): psnr_per_image(reconstruct(pipe, inversion, guidance_scale=float(w), output_type="uint8",
                                                 progress=False), inputs)
            for w in sample_guidances}


def steps_study(pipe, draws, steps: Sequence[int], vae: np.ndarray | None = None) -> dict:
    """DDIM inversion at w = 1 for each S of `steps` (module docstring). Returns dict(steps, vae (n,), psnr {S: (n,)},
    mean {S: Mean}, gap {S: Mean of VAE - PSNR}, wrong_basin {S: Rate}, improves: Rate of PSNR(S_max) > PSNR(S_min)
    - 0.3 dB per scene, scene_seeds)."""
    vae = vae_psnr(pipe, draws) if vae is None else vae
    psnr = {int(s): reconstruction_psnr(pipe, draws, "ddim", int(s), 1.0, [1.0])[1.0] for s in steps}
    first, last = psnr[int(steps[0])], psnr[int(steps[-1])]
    return {
        "steps": [int(s) for s in steps], "vae": vae, "psnr": psnr, "scene_seeds": [d.scene_seed for d in draws],
        "mean": {s: mean(v, "dB") for s, v in psnr.items()},
        "gap": {s: mean(vae - v, "dB") for s, v in psnr.items()},
        "wrong_basin": {s: rate(vae - v > WRONG_BASIN_DB) for s, v in psnr.items()},
        "improves": rate(last > first - 0.3),
    }


def steps_rows(study: dict) -> list[dict]:
    return [{"S": s, "PSNR": str(study["mean"][s]), "gap to VAE": str(study["gap"][s]),
             f"wrong basin (gap > {WRONG_BASIN_DB:g} dB)": str(study["wrong_basin"][s])} for s in study["steps"]]


GUIDANCE_METHODS = {  # name: (inversion method, guidance it inverts at: None = the sampling w)
    "DDIM inverted at w=1": ("ddim", 1.0),
    "DDIM inverted at w": ("ddim", None),
    "negative-prompt": ("negative_prompt", 1.0),
}


def guidance_study(pipe, draws, largest_guidance: float, num_steps: int) -> dict:
    """PSNR at w = 1 and at w = `largest_guidance` for each of GUIDANCE_METHODS (module docstring). Returns
    dict(w, methods {name: {"w=1": Mean, "w=..": Mean, "drop": Mean (dB), "breaks": Rate of drop >
    GUIDANCE_COST_DB}})."""
    w = float(largest_guidance)
    methods = {}
    for name, (method, invert_at) in GUIDANCE_METHODS.items():
        if invert_at is None:  # each w its own inversion
            at_1 = reconstruction_psnr(pipe, draws, method, num_steps, 1.0, [1.0])[1.0]
            at_w = reconstruction_psnr(pipe, draws, method, num_steps, w, [w])[w]
        else:
            both = reconstruction_psnr(pipe, draws, method, num_steps, invert_at, [1.0, w])
            at_1, at_w = both[1.0], both[w]
        drop = at_1 - at_w
        methods[name] = {"w=1": mean(at_1, "dB"), f"w={w:g}": mean(at_w, "dB"), "drop": mean(drop, "dB"),
                         "breaks": rate(drop > GUIDANCE_COST_DB), "psnr": {1.0: at_1, w: at_w}}
    return {"w": w, "num_steps": int(num_steps), "methods": methods, "scene_seeds": [d.scene_seed for d in draws]}


def guidance_rows(study: dict) -> list[dict]:
    w = study["w"]
    return [{"method": name, "w=1": str(m["w=1"]), f"w={w:g}": str(m[f"w={w:g}"]), "drop": str(m["drop"]),
             f"drop > {GUIDANCE_COST_DB:g} dB": str(m["breaks"])} for name, m in study["methods"].items()]


def basin_study(pipe, draws, num_steps: int, vae: np.ndarray | None = None, ddim_psnr: np.ndarray | None = None,
                **fixed_point_options) -> dict:
    """DDIM against fixed-point inversion at w = 1 and S = `num_steps` (module docstring); `ddim_psnr` reuses a
    steps_study's numbers. Returns dict(psnr {"DDIM", "fixed-point": (n,)}, vae, gap, near {name: Rate within
    NEAR_CEILING_DB}, wrong_basin {name: Rate}, missed_scenes (DDIM's wrong basins: scene seeds))."""
    vae = vae_psnr(pipe, draws) if vae is None else vae
    ddim = reconstruction_psnr(pipe, draws, "ddim", num_steps, 1.0, [1.0])[1.0] if ddim_psnr is None else ddim_psnr
    fixed = reconstruction_psnr(pipe, draws, "fixed_point", num_steps, 1.0, [1.0], **fixed_point_options)[1.0]
    psnr = {"DDIM": ddim, "fixed-point": fixed}
    return {
        "num_steps": int(num_steps), "vae": vae, "psnr": psnr, "scene_seeds": [d.scene_seed for d in draws],
        "gap": {k: mean(vae - v, "dB") for k, v in psnr.items()},
        "near": {k: rate(vae - v < NEAR_CEILING_DB) for k, v in psnr.items()},
        "wrong_basin": {k: rate(vae - v > WRONG_BASIN_DB) for k, v in psnr.items()},
        "missed_scenes": [d.scene_seed for d, gap in zip(draws, vae - ddim) if gap > WRONG_BASIN_DB],
    }


def basin_rows(study: dict) -> list[dict]:
    return [{"inversion (w = 1, S = %d)" % study["num_steps"]: name, "gap to VAE": str(study["gap"][name]),
             f"within {NEAR_CEILING_DB:g} dB of the VAE": str(study["near"][name]),
             f"wrong basin (gap > {WRONG_BASIN_DB:g} dB)": str(study["wrong_basin"][name])} for name in study["psnr"]]


def find_wrong_basin(pipe, image_size: int, first_scene: int, num_steps: int, max_scenes: int, batch: int = 16,
                     num_objects: int | None = 1):
    """Search scenes first_scene, first_scene + 1, ... (`scenes.scene_draws` with `num_objects`, at most
    `max_scenes`, `batch` at a time) for one that DDIM inversion at w = 1 and S = `num_steps` carries into another
    basin. Returns dict(scene_seed, searched, gap) for the first found, or dict(scene_seed=None, searched) when none
    of them misses."""
    from .scenes import scene_draws

    searched = 0
    while searched < max_scenes:
        seeds = range(first_scene + searched, first_scene + min(max_scenes, searched + batch))
        draws = scene_draws(image_size, seeds, num_objects=num_objects)
        gaps = vae_psnr(pipe, draws) - reconstruction_psnr(pipe, draws, "ddim", num_steps, 1.0, [1.0])[1.0]
        for draw, gap in zip(draws, gaps):
            if gap > WRONG_BASIN_DB:
                return {"scene_seed": draw.scene_seed, "searched": draw.scene_seed - first_scene + 1,
                        "gap": float(gap)}
        searched += len(draws)
    return {"scene_seed": None, "searched": searched, "gap": None}


def edit_friendly_study(pipe, draws, num_steps: int, guidance_scale: float, eta: float, seed: int,
                        vae: np.ndarray | None = None) -> dict:
    """Edit-friendly inversion of every scene at (S, w, eta), x_t drawn from `seed` (scene b from seed + b), sampled
    back with its noise maps: dict(exact Rate within EXACT_DB of the VAE, gap Mean, noise_std Mean of the maps' std
    per scene)."""
    from ..inversion import invert, reconstruct

    vae = vae_psnr(pipe, draws) if vae is None else vae
    inversion = invert(pipe, [d.image for d in draws], [d.prompt for d in draws], method="edit_friendly",
                       num_steps=int(num_steps), guidance_scale=float(guidance_scale), eta=float(eta), seed=int(seed),
                       progress=False)
    psnr = psnr_per_image(reconstruct(pipe, inversion, output_type="uint8", progress=False), inputs_uint8(draws))
    maps = inversion.noise_maps.detach().to("cpu").double()  # (S, n, C, h, w)
    per_scene = maps.transpose(0, 1).reshape(len(draws), -1).std(dim=1).numpy()  # (n,)
    return {"eta": float(eta), "exact": rate(np.abs(vae - psnr) < EXACT_DB), "gap": mean(vae - psnr, "dB"),
            "noise_std": mean(per_scene), "psnr": psnr}

