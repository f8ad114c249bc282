"""Words -> cross-attention columns, and prompt alignment for Prompt-to-Prompt (no model needed)."""

import pytest
import torch

from diffusion_lab.attention.tokens import (
    _token_spans_by_decoding,
    _token_spans_from_offsets,
    prompt_token_ids,
    prompt_word_tokens,
    refinement_alignment,
    replacement_mapper,
    token_scales,
    word_token_indices,
)
from diffusion_lab.models.tiny_random import build_tiny_tokenizer


@pytest.fixture(scope="module")
def bpe():
    return build_tiny_tokenizer()


@pytest.fixture(scope="module")
def word_level():
    """A word-level tokenizer like shapes-tiny's: one token per word, its own special tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = "<pad> <bos> <eos> <unk> a an big small red blue circle square on the background".split()
    vocab = {word: i for i, word in enumerate(words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", vocab["<bos>"]), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        model_max_length=8,
    )


def test_bpe_word_split_in_several_tokens(bpe):
    assert bpe.tokenize("a tiger") == ["a</w>", "ti", "ger</w>"]
    # position 0 is the start token: "a" -> 1, "tiger" -> 2 and 3
    assert word_token_indices(bpe, "a tiger on a couch", "tiger") == [2, 3]
    assert word_token_indices(bpe, "a tiger on a couch", "couch") == [6]
    assert word_token_indices(bpe, "a tiger on a couch", "a") == [1, 5]  # every occurrence
    assert word_token_indices(bpe, "a tiger on a couch", 1) == [2, 3]  # by word position
    # case and punctuation do not matter; the comma's own token is not part of the word
    assert word_token_indices(bpe, "A Tiger, on a couch", "tiger") == [2, 3]
    assert word_token_indices(bpe, "a big red circle", "red circle") == [3, 4]
    assert prompt_word_tokens(bpe, "a butterfly, on a flower") == [
        ("a", [1]), ("butterfly", [2, 3]), ("on", [5]), ("a", [6]), ("flower", [7])
    ]


def test_decoding_token_by_token_agrees_with_offsets(bpe, word_level):
    for tokenizer, prompt in [(bpe, "A Tiger, on a spikey flower."), (word_level, "a big red circle")]:
        ids = prompt_token_ids(tokenizer, prompt)
        assert _token_spans_by_decoding(tokenizer, prompt, ids) == _token_spans_from_offsets(tokenizer, prompt, ids)


def test_word_level_tokenizer(word_level):
    assert word_token_indices(word_level, "a big red circle", "red") == [3]
    assert word_token_indices(word_level, "A big RED circle", "red circle") == [3, 4]
    assert token_scales(word_level, "a big red circle", {"big": 2.0}).tolist() == [1, 1, 2, 1, 1, 1, 1, 1]


def test_word_not_in_prompt_error(bpe):
    with pytest.raises(ValueError, match=r"'dog' is not a word of the prompt 'a cat on a couch'.*\['a', 'cat'"):
        word_token_indices(bpe, "a cat on a couch", "dog")


def test_prompt_too_long_error_uses_tokenizer_length(bpe, word_level):
    long_prompt = "a cat on a couch with a dog and a big red circle on a tree"
    with pytest.raises(ValueError, match=r"has 18 tokens .* at most 16 \(tokenizer.model_max_length\)"):
        word_token_indices(bpe, long_prompt, "cat")
    with pytest.raises(ValueError, match="at most 8"):
        prompt_token_ids(word_level, "a big red circle on the blue background")


def test_replacement_mapper_same_layout_is_identity(bpe):
    mapper = replacement_mapper(bpe, "a cat on a couch", "a dog on a couch")
    assert torch.equal(mapper, torch.eye(bpe.model_max_length))


def test_word_swap_with_different_token_counts_suggests_refine(bpe):
    with pytest.raises(ValueError, match=r"source has 7 tokens and the target 8.*Use AttentionRefine"):
        replacement_mapper(bpe, "a cat on a couch", "a tiger on a couch")  # tiger is 2 tokens
    with pytest.raises(ValueError, match="Use AttentionRefine"):
        replacement_mapper(bpe, "a red circle", "a big red circle")
    # same total but the words do not line up
    with pytest.raises(ValueError, match=r"'tiger' is 2 token\(s\).*Use AttentionRefine"):
        replacement_mapper(bpe, "a tiger cat", "a dog butterfly")


def test_refinement_alignment_phrase_addition(bpe):
    mapper, alphas = refinement_alignment(bpe, "a red circle", "a big red circle")
    # target: <bos> a big red circle <eos> <pad>...; source: <bos> a red circle <eos> <pad>...
    assert mapper[:6].tolist() == [0, 1, -1, 2, 3, 4]
    assert alphas[:6].tolist() == [1, 1, 0, 1, 1, 1]
    assert mapper.shape == alphas.shape == (16,)
    assert mapper[6:].tolist() == list(range(6, 16))  # padding keeps its position (P2P's seq_aligner)
    assert alphas[6:].eq(1).all()


def test_refinement_alignment_with_split_word_and_deletion(bpe):
    mapper, alphas = refinement_alignment(bpe, "a cat on a couch", "a tiger cat on a couch")
    assert mapper[:9].tolist() == [0, 1, -1, -1, 2, 3, 4, 5, 6]  # "ti", "ger" are new
    assert alphas[:9].tolist() == [1, 1, 0, 0, 1, 1, 1, 1, 1]
    mapper, alphas = refinement_alignment(bpe, "a big red circle", "a red circle")
    assert mapper[:5].tolist() == [0, 1, 3, 4, 5]
    assert mapper[5:].tolist() == [6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 15]  # padding to padding, never to a word
    assert alphas.eq(1).all()
