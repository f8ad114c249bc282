"""Prompts -> token ids -> text embeddings (the conditioning c of the denoiser), with clear errors.

Works for the word-level tokenizer of shapes-tiny and for CLIP's BPE tokenizer of real checkpoints.
"""

from __future__ import annotations

from typing import Sequence

import torch


class PromptError(ValueError):
    """A prompt the model cannot read: unknown words for a closed vocabulary, words it was never trained on, or too long."""


def _word_level_vocabulary(tokenizer) -> list[str]:
    specials = set(tokenizer.all_special_tokens)
    vocab = tokenizer.get_vocab()
    return [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if w not in specials]


def check_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` (with bos/eos), or a PromptError that says what to do."""
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a string, got {type(prompt).__name__}")
    ids = tokenizer(prompt, truncation=False, add_special_tokens=True).input_ids
    unk = tokenizer.unk_token_id
    if unk is not None and unk in ids and unk != tokenizer.eos_token_id:
        words = prompt.lower().split()
        vocab = set(tokenizer.get_vocab())
        unknown = [w for w in words if w not in vocab] or [prompt]
        punctuated = [w for w in unknown if w.strip(".,;:!?\"'()") in vocab and w.strip(".,;:!?\"'()")]
        if punctuated:
            raise PromptError(
                f"word(s) {', '.join(repr(w) for w in punctuated)} carry punctuation, which this model's tokenizer "
                "does not know: write the prompt without commas or full stops"
            )
        raise PromptError(
            f"word(s) {', '.join(repr(w) for w in unknown)} are not in this model's vocabulary; "
            f"use only: {' '.join(_word_level_vocabulary(tokenizer))}"
        )
    untrained, why = getattr(tokenizer, "untrained_words", ((), ""))
    named = [w for w in prompt.lower().replace(",", " ").replace(".", " ").split() if w in untrained]
    if named:
        raise PromptError(
            f"word(s) {', '.join(repr(w) for w in dict.fromkeys(named))} were never used in this model's training: "
            f"{why} Leave them out of the prompt: {prompt!r}"
        )
    limit = tokenizer.model_max_length
    if len(ids) > limit:
        raise PromptError(
            f"prompt has {len(ids)} tokens but the tokenizer allows {limit} (including start and end tokens); shorten it: {prompt!r}"
        )
    return ids


def tokenize_prompts(tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """(B, L) token ids padded to the tokenizer's max length, after checking every prompt."""
    for prompt in prompts:
        check_prompt(tokenizer, prompt)
    return tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids


@torch.no_grad()
def encode_prompts(pipe, prompts: Sequence[str]) -> torch.Tensor:
    """Text embeddings (B, L, D) of the prompts: the last hidden state of the text encoder, as in SD.

    For SDXL: the packed condition (B, L + 1, D) of conditioning.py (both encoders' token embeddings, and the
    pooled embedding as one extra row), after checking the prompts against both tokenizers.
    """
    from diffusion_lab.conditioning import encode_sdxl_prompts, is_sdxl

    if isinstance(prompts, str):
        prompts = [prompts]
    if is_sdxl(pipe):
        for prompt in prompts:
            check_prompt(pipe.tokenizer, prompt)
            check_prompt(pipe.tokenizer_2, prompt)
        return encode_sdxl_prompts(pipe, prompts)
    ids = tokenize_prompts(pipe.tokenizer, prompts).to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0].float()
