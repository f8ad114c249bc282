"""`load_pipeline`: the built-in model offline, or any SD 1.x/2.x or SDXL checkpoint through from_pretrained.

Security: weights are loaded only from safetensors (`use_safetensors=True`) and never with
`trust_remote_code`. Loading is cached per (name, device, dtype) so widgets and batch chunks do not reload.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from pathlib import Path
from typing import Optional, Union

from .shapes_tiny import MODEL_DIR as SHAPES_TINY_DIR

BUILTIN_MODELS = {"shapes-tiny": SHAPES_TINY_DIR}
_CACHE: dict = {}


class ModelNotFoundError(FileNotFoundError):
    """The checkpoint is neither a local folder nor reachable on the hub."""


def default_device() -> str:
    """cuda, then mps, then cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def synchronize(device) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure it (no-op on the CPU)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def clear_pipeline_cache() -> None:
    _CACHE.clear()


def _resolve_dtype(dtype, device: str):
    import torch

    if dtype is None:
        return torch.float16 if device == "cuda" else torch.float32
    if isinstance(dtype, str):
        try:
            return {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16}[dtype]
        except KeyError:
            raise ValueError(f"unknown dtype {dtype!r}; use float32, float16 or bfloat16") from None
    return dtype


def pipeline_class(path: str, local: bool):
    """StableDiffusionXLPipeline when the checkpoint's model_index.json names an SDXL pipeline, else
    StableDiffusionPipeline (SD 1.x / 2.x). Only these two classes are ever instantiated."""
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline

    try:
        config = DiffusionPipeline.load_config(path, local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, EnvironmentError, ValueError):
        return StableDiffusionPipeline  # from_pretrained below reports what is missing
    return StableDiffusionXLPipeline if "XL" in str(config.get("_class_name", "")) else StableDiffusionPipeline


@contextlib.contextmanager
def _loading_bars(enabled: bool):
    """diffusers' and transformers' loading bars on (as they were) or off for one from_pretrained; with
    DIFFUSION_LAB_NO_PROGRESS=1 (tests, batch logs) they are turned off for good, as every other bar."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    from ..progress import progress_disabled_by_env

    libraries = (diffusers_logging, transformers_logging)
    if progress_disabled_by_env():
        for library in libraries:
            library.disable_progress_bar()
    were_enabled = [library.is_progress_bar_enabled() for library in libraries]
    if not enabled:
        for library in libraries:
            library.disable_progress_bar()
    try:
        yield
    finally:
        for library, was_enabled in zip(libraries, were_enabled):
            if was_enabled:
                library.enable_progress_bar()


def load_pipeline(name_or_path: Union[str, os.PathLike] = "shapes-tiny", device: Optional[str] = None, dtype=None):
    """Load a StableDiffusionPipeline (or a StableDiffusionXLPipeline for an SDXL checkpoint).

    name_or_path: "shapes-tiny" (built in, offline), a local diffusers folder, or a hub id such as
    "stable-diffusion-v1-5/stable-diffusion-v1-5" (needs network or the local hub cache).
    device: "cuda", "mps" or "cpu"; chosen automatically when None. dtype: float16 on cuda by
    default, float32 elsewhere (the built-in model always runs in float32).
    The scheduler is replaced by a DDIMScheduler built from the checkpoint's own scheduler config
    (clip_sample off), so epsilon and v-prediction checkpoints both work.
    """
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    device = device or default_device()
    name = str(name_or_path)
    builtin = name in BUILTIN_MODELS
    path = BUILTIN_MODELS.get(name, Path(name))
    torch_dtype = torch.float32 if builtin else _resolve_dtype(dtype, device)
    key = (name, device, str(torch_dtype))
    if key in _CACHE:
        return _CACHE[key]
    if builtin and not (Path(path) / "model_index.json").exists():
        raise ModelNotFoundError(
            f"the built-in model's weights are missing from {path}; reinstall diffusion-lab "
            "or train them with `python pipelines/train_shapes_tiny.py --export-dir " + str(path) + "`"
        )
    local = Path(path).is_dir()
    if local and not builtin and not (Path(path) / "model_index.json").is_file():
        raise ModelNotFoundError(
            f"{name!r} is a folder but not a diffusers pipeline: it has no model_index.json. Give the folder that "
            "holds model_index.json with unet/, vae/, text_encoder/, tokenizer/ and scheduler/ beside it (what "
            "`huggingface-cli download owner/name --local-dir folder` or `pipe.save_pretrained(folder)` writes)"
        )
    if not local and (Path(name).is_absolute() or name.startswith(".") or os.sep in name and name.count("/") != 1):
        raise ModelNotFoundError(f"no model folder at {name!r}; give an existing diffusers folder or a hub id like 'owner/name'")
    if not local and "/" not in name:  # not a folder, and a hub id of a diffusers pipeline is always 'owner/name'
        close = difflib.get_close_matches(name.lower(), list(BUILTIN_MODELS), n=1, cutoff=0.6)
        raise ModelNotFoundError(
            f"no model named {name!r}: not a built-in model ({', '.join(BUILTIN_MODELS)}), not a folder here, and "
            f"a hub id looks like 'owner/name'" + (f". Did you mean {close[0]!r}?" if close else "")
        )
    kwargs = dict(dtype=torch_dtype, use_safetensors=True, low_cpu_mem_usage=False)
    cls = StableDiffusionPipeline if builtin else pipeline_class(str(path), local)
    if cls is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        with _loading_bars(enabled=not builtin):  # the built-in model loads in well under a second: no bars
            pipe = cls.from_pretrained(str(path), local_files_only=local or os.environ.get("HF_HUB_OFFLINE") == "1", **kwargs)
    except (OSError, EnvironmentError, ValueError) as error:
        raise ModelNotFoundError(
            f"could not load {name!r}: it is not a local diffusers folder and could not be fetched from the hub "
            f"(or it has no safetensors weights). Download it on a machine with network access with "
            f"`huggingface-cli download {name}` and pass the folder, or use 'shapes-tiny'. Cause: {error}"
        ) from error
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)
    if builtin:  # its name, not this machine's install folder: what an inversion saved from it records
        pipe.register_to_config(_name_or_path=name)
    mark_untrained_words(pipe.tokenizer, path)
    pipe = pipe.to(device)
    if getattr(pipe.vae.config, "force_upcast", False) and pipe.vae.dtype == torch.float16:
        pipe.vae.to(torch.float32)  # SDXL's VAE overflows in fp16 (its config says so); latents.py casts to vae.dtype
    pipe.set_progress_bar_config(disable=True)
    for module in (pipe.vae, pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.eval().requires_grad_(False)
    _CACHE[key] = pipe
    return pipe


def mark_untrained_words(tokenizer, folder) -> None:
    """Words the model's tokenizer knows but its training never used (training_info.json's "untrained_words":
    {"words": [...], "why": "..."}): text.check_prompt refuses them, saying why, rather than letting the model
    silently ignore them."""
    info_path = Path(folder) / "training_info.json"
    if not info_path.is_file():
        return
    untrained = json.loads(info_path.read_text()).get("untrained_words")
    if untrained:
        tokenizer.untrained_words = (tuple(untrained["words"]), untrained.get("why", ""))
