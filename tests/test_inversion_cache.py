"""Inversions computed once per image, prompt and settings (inversion/cache.py): the key, and that a second edit of
the same real image (edit_real, a batch row) neither re-inverts nor recomputes its source branch."""

import numpy as np
import pytest
import torch
from PIL import Image

from diffusion_lab.attention import SourceBranchCache
from diffusion_lab.editing import edit_real
from diffusion_lab.inversion import InversionCache, cached_invert, invert
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.shapes import caption, random_scene, render

STEPS = 6


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random_pipeline(seed=0)


@pytest.fixture(scope="module")
def shapes_tiny():
    from diffusion_lab import load_pipeline

    return load_pipeline("shapes-tiny", device="cpu")


def _swap_first_shape(prompt: str) -> str:
    """The prompt with its first shape word swapped for another shape (same number of words)."""
    from diffusion_lab.shapes import SHAPES

    words = prompt.split()
    index = next(i for i, word in enumerate(words) if word in SHAPES)
    words[index] = next(shape for shape in SHAPES if shape != words[index])
    return " ".join(words)


def _image(size: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def test_the_image_digest_depends_on_the_pixels_only(tmp_path):
    from diffusion_lab.inversion.cache import content_digest

    image = Image.fromarray(_image(16))
    assert content_digest(image) == content_digest(image.copy()) == content_digest(np.asarray(image).copy())
    other = image.copy()
    other.putpixel((0, 0), (0, 0, 0) if image.getpixel((0, 0)) != (0, 0, 0) else (1, 1, 1))
    assert content_digest(other) != content_digest(image)
    image.save(tmp_path / "a.png")
    assert content_digest(str(tmp_path / "a.png")) == content_digest(tmp_path / "a.png")
    assert content_digest([image, other]) != content_digest([other, image])


def test_the_key_is_the_pixels_the_prompt_the_settings_and_the_weights(tiny):
    cache = InversionCache(max_items=3)
    image = _image(32)
    first = cached_invert(tiny, image, "a red circle", "ddim", STEPS, 1.0, cache=cache)
    # the same pixels as a PIL image, another array object: the same entry
    assert cached_invert(tiny, Image.fromarray(image.copy()), "a red circle", "ddim", STEPS, 1.0, cache=cache) is first
    assert (cache.hits, cache.misses) == (1, 1)
    for changed in ({"image": _image(32, seed=1)}, {"prompt": "a red square"}, {"num_steps": STEPS + 1},
                    {"method": "negative_prompt", "guidance_scale": 3.0}):
        arguments = {"image": image, "prompt": "a red circle", "method": "ddim", "num_steps": STEPS,
                     "guidance_scale": 1.0, **changed}
        assert cached_invert(tiny, cache=cache, **arguments) is not first, changed
    assert cache.misses == 5 and len(cache) == 3  # bounded: the oldest entries went
    # weights changed in place are another model: a miss, and the result follows the new weights
    again = cached_invert(tiny, image, "a red circle", "ddim", STEPS, 1.0, cache=cache)
    with torch.no_grad():
        parameter = next(tiny.unet.parameters())
        saved = parameter.clone()
        parameter.mul_(1.01)
        try:
            changed = cached_invert(tiny, image, "a red circle", "ddim", STEPS, 1.0, cache=cache)
        finally:
            parameter.copy_(saved)
    assert changed is not again and not torch.equal(changed.latents, again.latents)
    # what it returns is what invert computes
    torch.testing.assert_close(first.latents, invert(tiny, image, "a red circle", "ddim", STEPS, 1.0,
                                                     progress=False).latents, atol=0, rtol=0)


def test_null_text_settings_objects_are_keys_by_their_fields(tiny):
    """A NullTextSettings (a dataclass, unhashable) used to make cached_invert compute without the cache, silently."""
    from diffusion_lab.inversion import NullTextSettings

    cache = InversionCache()
    image = _image(32)

    def run(settings):
        return cached_invert(tiny, image, "a red circle", "null_text", 2, 3.0, cache=cache, null_text_settings=settings,
                             inner_steps=1)

    first = run(NullTextSettings.paper())
    assert run(NullTextSettings.paper()) is first and (cache.hits, cache.misses) == (1, 1)
    assert run(NullTextSettings.paper(learning_rate=0.02)) is not first and cache.misses == 2
    assert run("paper") is not first  # the name and the object are different keys (both cached), never mixed up


def test_a_second_edit_of_the_same_image_replays_inversion_and_source(shapes_tiny):
    """edit_real on an image, then on the same image with another target: the second call runs neither the
    inversion nor the source branch (both caches hit), and gives what a fresh, uncached edit gives (within 1/255:
    the fresh one runs the UNet eager where the cached path may run it traced)."""
    from diffusion_lab.inversion import default_inversion_cache
    from diffusion_lab.latents import image_size

    scene = random_scene(1_000_123)
    image, prompt = render(scene, size=image_size(shapes_tiny)).image, caption(scene)
    target = _swap_first_shape(prompt)
    inversions, sources = default_inversion_cache(), SourceBranchCache(max_entries=2)
    inversions.clear()
    options = dict(inversion_method="null_text", num_steps=10, inner_steps=2, progress=False, source_cache=sources)
    first = edit_real(shapes_tiny, image, prompt, [prompt], **options)
    second = edit_real(shapes_tiny, image, prompt, [target], **options)
    assert (inversions.hits, inversions.misses) == (1, 1) and second.inversion is first.inversion
    assert (sources.hits, sources.misses) == (1, 1)
    fresh = edit_real(shapes_tiny, image, prompt, [target], **{**options, "source_cache": False})
    assert inversions.misses == 1  # source_cache=False inverts afresh and keeps nothing
    difference = np.abs(np.asarray(second.edited_images[0], int) - np.asarray(fresh.edited_images[0], int)).max()
    assert difference <= 1, difference


def test_batch_rows_sharing_an_image_invert_it_once(shapes_tiny, tmp_path):
    from diffusion_lab.batch.rows import edit_row
    from diffusion_lab.inversion import default_inversion_cache
    from diffusion_lab.latents import image_size

    scene = random_scene(1_000_321)
    path = tmp_path / "scene.png"
    Image.fromarray(render(scene, size=image_size(shapes_tiny)).image).save(path)
    prompt = caption(scene)
    inversions = default_inversion_cache()
    inversions.clear()

    def row(index: int, target: str) -> dict:
        return {"id": f"row-{index}", "key": f"key-{index}", "image": {"kind": "file", "path": str(path)},
                "edit": {"source_prompt": prompt, "target_prompts": [target], "edit": "replace"},
                "inversion": {"method": "ddim", "options": {}}, "seed": None, "num_steps": 8, "guidance_scale": 1.0}

    edit_row(shapes_tiny, row(0, prompt), "shapes-tiny")
    _, metrics = edit_row(shapes_tiny, row(1, _swap_first_shape(prompt)), "shapes-tiny")
    assert (inversions.hits, inversions.misses) == (1, 1)
    assert metrics["reconstruction"]["psnr"] > 15
    papers = row(2, prompt)  # a manifest's inversion_options.null_text_settings reaches invert
    papers["inversion"] = {"method": "null_text", "options": {"null_text_settings": "paper", "inner_steps": 1}}
    edit_row(shapes_tiny, papers, "shapes-tiny")
    (inversion,) = [entry for entry in inversions.entries.values() if entry.method == "null_text"]
    assert inversion.settings["learning_rate"] == 1e-2 and inversion.settings["check_first"] is False
