"""diffusion-lab: image editing with diffusion models, from the lecture to a batch pipeline.

Data flows one way:
    image -> latents -> inversion -> attention controller -> edited image

Submodules (import what you need; heavy ones load torch/diffusers lazily):
    shapes      the offline shapes world: scenes, captions, renderer, ground-truth edits, analyzer
    schedules   beta / alpha_bar schedules and timestep subsequences
    posterior   q(x_t | x_0) and the generalized sigma-posterior q_sigma(x_{t-1} | x_t, x_0)
    sampling    the model-agnostic sampling loop (classifier-free guidance via denoisers)
    models      load_pipeline("shapes-tiny" | hub id | folder), tiny random SD pipelines
    attention   Prompt-to-Prompt attention processor and controllers
"""

__version__ = "0.1.0"


def load_pipeline(name_or_path: str = "shapes-tiny", device=None, dtype=None):
    """Load a Stable-Diffusion-architecture pipeline (see diffusion_lab.models.load_pipeline)."""
    from .models import load_pipeline as _load

    return _load(name_or_path, device=device, dtype=dtype)
