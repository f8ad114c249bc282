"""The fixed set of Prompt-to-Prompt edits whose outputs tests/test_p2p_speed.py holds the fast paths to (replace,
refine, reweight, local blend; generated and real), and how tests/data/p2p_reference.npz was made from them:

    PYTHONPATH=<a checkout of commit 5a0bb3a, before the traced controlled UNet and the recorded source>
    python tests/p2p_reference_cases.py tests/data/p2p_reference.npz

The local-blend cases name blend_mask_style="ours": the reference holds our mask, the only one at 5a0bb3a (the
default is now the official Prompt-to-Prompt mask); that commit's PromptEdit lacks the setting, so drop it there.
"""

import sys

import numpy as np

STEPS = 10
SEED = 3
SOURCE = "a large red circle on a gray background"
GENERATED = {
    "replace": dict(source_prompt=SOURCE, target_prompts=["a large blue circle on a gray background"]),
    "local_blend": dict(source_prompt=SOURCE, target_prompts=["a large red square on a gray background"],
                        blend_words=["circle", "square"], blend_mask_style="ours"),
    "refine": dict(source_prompt="a red circle on a gray background", target_prompts=[SOURCE], edit="refine"),
    "reweight": dict(source_prompt=SOURCE, target_prompts=[SOURCE], edit="reweight", reweight={"red": 2.0}),
}
REAL_SCENE_SEED = 1_000_003  # a held-out render (pipelines/bench_inversion.py's seeds)
REAL = {
    "real_replace": dict(target="blue", blend_words=None),
    "real_local_blend": dict(target="square", blend_words=["circle", "square"]),
}


def real_inversion(pipe):
    """A render, its caption and its null-text inversion at the paper's settings (10 steps, 3 inner steps): the
    paper's loop, which was the default when the reference was made (null_text_settings="paper" since the faster
    default; a checkout before it has no such keyword and runs the paper's loop anyway)."""
    import inspect

    from diffusion_lab.inversion import invert
    from diffusion_lab.latents import image_size
    from diffusion_lab.shapes import caption, random_scene, render

    scene = random_scene(REAL_SCENE_SEED)
    prompt = caption(scene)
    paper = {"null_text_settings": "paper"} if "null_text_settings" in inspect.signature(invert).parameters else {}
    inversion = invert(pipe, render(scene, size=image_size(pipe)).image, prompt, method="null_text", num_steps=STEPS,
                       inner_steps=3, learning_rate=1e-2, progress=False, **paper)
    return prompt, inversion


def real_edit(prompt: str, name: str) -> dict | None:
    """The edit dict of REAL[name] for this caption (None when the caption lacks the word it swaps)."""
    words = prompt.split()
    spec = REAL[name]
    old = next((w for w in words if w in ("circle", "square", "triangle", "star")), None) if spec["target"] == "square" \
        else next((w for w in words if w in ("red", "green", "yellow", "orange", "purple", "white")), None)
    if old is None or old == spec["target"]:
        return None
    edit = dict(source_prompt=prompt, target_prompts=[prompt.replace(old, spec["target"], 1)])
    if spec["blend_words"]:
        edit["blend_words"], edit["blend_mask_style"] = [old, spec["target"]], "ours"
    return edit


def run_all(pipe, real=None, **run_options) -> dict[str, np.ndarray]:
    """name -> uint8 (2, H, W, 3) [source, edit] of every case; real: (prompt, inversion) of real_inversion to reuse."""
    from diffusion_lab.editing import PromptEdit, run_edit

    images = {}
    for name, edit in GENERATED.items():
        images[name] = run_edit(pipe, PromptEdit.from_dict(edit), seed=SEED, num_steps=STEPS, progress=False,
                                **run_options).images
    prompt, inversion = real_inversion(pipe) if real is None else real
    for name in REAL:
        edit = real_edit(prompt, name)
        images[name] = run_edit(pipe, PromptEdit.from_dict(edit), inversion=inversion, progress=False,
                                **run_options).images
    return images


if __name__ == "__main__":
    import torch

    from diffusion_lab import load_pipeline

    torch.set_num_threads(1)
    pipe = load_pipeline("shapes-tiny", device="cpu")
    with torch.no_grad():
        np.savez_compressed(sys.argv[1], **run_all(pipe))
