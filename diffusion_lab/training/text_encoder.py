"""The text encoder's depth: growing it by identity-initialised layers, reading a run's layer count from its
weights, and building the untrained pipeline that fits a run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
from safetensors import safe_open

from .settings import TrainingSettings


def grow_text_encoder(text_encoder, num_layers: int):
    """A CLIPTextModel with `num_layers` transformer layers that computes exactly what `text_encoder` does.

    The existing weights (embeddings, layers, final layer norm) are copied; each new layer is appended with
    the output projections of its attention (self_attn.out_proj) and of its MLP (mlp.fc2) zeroed. CLIP layers
    are pre-LayerNorm residual blocks, h + attn(ln1(h)) then h + mlp(ln2(h)), so a new layer adds exactly
    zero: training resumes from the same function, and the gradient into the zeroed projections is not
    zero, so the layer starts learning at once. The layers are causal: a word sees the words before it
    ("circle" the "red" of "a red circle"), which a 0-layer encoder cannot."""
    import copy

    from transformers import CLIPTextModel

    old_layers = text_encoder.config.num_hidden_layers
    if num_layers < old_layers:
        raise ValueError(f"the text encoder has {old_layers} layers: it can grow, not shrink to {num_layers}")
    config = copy.deepcopy(text_encoder.config)
    config.num_hidden_layers = num_layers
    grown = CLIPTextModel(config)
    missing, unexpected = grown.load_state_dict(text_encoder.state_dict(), strict=False)
    new_prefixes = tuple(f"encoder.layers.{i}." for i in range(old_layers, num_layers))  # transformers 5: no text_model.
    if unexpected or not all(key.startswith(new_prefixes) for key in missing):  # not a CLIPTextModel of this layout
        raise RuntimeError(f"cannot grow this text encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for layer in grown.encoder.layers[old_layers:]:
            for projection in (layer.self_attn.out_proj, layer.mlp.fc2):
                projection.weight.zero_()
                projection.bias.zero_()
    parameter = next(text_encoder.parameters())
    return grown.to(device=parameter.device, dtype=parameter.dtype).train(text_encoder.training)


TEXT_LAYER_PREFIX = "text_encoder.encoder.layers."  # a layer's weights in a run file (transformers 5 key names)


def text_layers_of_run(run_dir) -> Optional[int]:
    """The number of transformer layers of a run's text encoder, read from its weights (None: no weights yet).

    A run grown at seeding keeps no config of its own: its weights are the record, so every stage builds
    the pipeline that loads them (counts the distinct `text_encoder.encoder.layers.<i>.`)."""
    for name in ("unet_text.safetensors", "unet_text_ema.safetensors"):
        path = Path(run_dir) / name
        if path.exists():
            with safe_open(str(path), framework="pt") as f:
                return len({key[len(TEXT_LAYER_PREFIX) :].split(".")[0] for key in f.keys() if key.startswith(TEXT_LAYER_PREFIX)})
    return None


def build_run_pipeline(settings: TrainingSettings):
    """The untrained pipeline whose architecture fits settings.run_dir: its text encoder has as many layers as
    the run's weights (settings.text_layers for a run that has none yet, i.e. one trained from scratch).

    Layers are grown only when seeding (seed_run_from_export): a --text-layers that disagrees with an existing
    run's weights is an error, not a silent rebuild."""
    from ..models.shapes_tiny import build_untrained_pipeline

    layers = text_layers_of_run(settings.run_dir)
    if layers is not None and settings.text_layers and settings.text_layers != layers:
        raise ValueError(f"{settings.run_dir} has a text encoder of {layers} layers, not {settings.text_layers}: "
                         "--text-layers grows a run only when seeding it (--stage seed into an empty folder)")
    return build_untrained_pipeline(seed=settings.seed, text_layers=settings.text_layers if layers is None else layers)
