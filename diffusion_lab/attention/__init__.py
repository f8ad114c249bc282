"""Prompt-to-Prompt attention control (Hertz et al. 2022, arXiv:2208.01626) for diffusers UNets.

    store = AttentionStore(num_prompts=1)
    with register_attention_control(pipe.unet, store):
        ...  # a sampling loop that calls store.set_step(step_index, num_steps) before each UNet call
    maps = store.average_cross_attention(resolution=16)  # (16, 16, tokens)
"""

from .controllers import (
    AttentionController,
    AttentionEdit,
    AttentionRefine,
    AttentionReplace,
    AttentionReweight,
    AttentionStore,
    DEFAULT_MASK_STYLE,
    LocalBlend,
    MASK_STYLES,
)
from .maps import cross_attention_per_word, normalize_map, self_attention_components, upsample_map
from .source_branch import SourceBranch, SourceBranchCache, default_source_cache, source_branch_bytes
from .processor import AttentionControl, AttentionLayer, ControlledAttentionProcessor, register_attention_control
from .tokens import (
    max_tokens,
    prompt_token_ids,
    prompt_tokens,
    prompt_word_tokens,
    refinement_alignment,
    replacement_mapper,
    token_scales,
    word_token_indices,
)

__all__ = [
    "AttentionControl",
    "AttentionController",
    "AttentionEdit",
    "AttentionLayer",
    "AttentionRefine",
    "AttentionReplace",
    "AttentionReweight",
    "AttentionStore",
    "ControlledAttentionProcessor",
    "SourceBranch",
    "SourceBranchCache",
    "DEFAULT_MASK_STYLE",
    "LocalBlend",
    "MASK_STYLES",
    "cross_attention_per_word",
    "default_source_cache",
    "max_tokens",
    "normalize_map",
    "prompt_token_ids",
    "prompt_tokens",
    "prompt_word_tokens",
    "refinement_alignment",
    "register_attention_control",
    "replacement_mapper",
    "self_attention_components",
    "source_branch_bytes",
    "token_scales",
    "upsample_map",
    "word_token_indices",
]
