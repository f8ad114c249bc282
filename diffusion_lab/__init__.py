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


def _drop_torchvision_fallback_notice() -> None:
    """transformers 5.2x logs, whenever diffusers imports its IP-adapter classes (every pipeline import), that the
    CLIP and SigLIP image processors "require torchvision (not installed)" and fall back to PIL. diffusion-lab uses
    no image processor, and PyPI's torchvision does not even import beside the CPU torch wheel of the course
    machines, so the notice only sends students after a package that breaks their set-up: drop exactly that message
    (every other transformers warning still shows)."""
    import logging

    class _TorchvisionFallbackFilter(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            message = record.getMessage()
            return not ("requires torchvision" in message and "falling back to" in message)

    logger = logging.getLogger("transformers.utils.import_utils")
    if not any(type(f).__name__ == "_TorchvisionFallbackFilter" for f in logger.filters):  # once, even on reload
        logger.addFilter(_TorchvisionFallbackFilter())


_drop_torchvision_fallback_notice()


def load_pipeline(name_or_path: str = "shapes-tiny", device=None, dtype=None):
    """Load a Stable-Diffusion-architecture pipeline (see diffusion_lab.models.load_pipeline)."""
    from .models import load_pipeline as _load

    return _load(name_or_path, device=device, dtype=dtype)
