"""Model registry: the built-in shapes-tiny and real Stable Diffusion checkpoints, loaded the same way."""

from .loading import BUILTIN_MODELS, ModelNotFoundError, clear_pipeline_cache, default_device, load_pipeline

__all__ = ["BUILTIN_MODELS", "ModelNotFoundError", "clear_pipeline_cache", "default_device", "load_pipeline"]
