"""Words and tokens: which cross-attention columns belong to a word, and how two prompts align.

Cross-attention maps have one column per token of the padded prompt: column 0 is the start
token (bos), then the prompt's tokens, then the end token (eos) and padding up to
`tokenizer.model_max_length`. A word may span several tokens with a BPE tokenizer
("tiger" -> "ti", "ger</w>") or exactly one with a word-level tokenizer (shapes-tiny).

Prompt-to-Prompt (Hertz et al. 2022, arXiv:2208.01626) needs:
  * word_token_indices: the columns of a word (for reweighting, local blend, per-word schedules);
  * replacement_mapper: for a word swap ("a cat" -> "a dog"), target column j takes source column i;
  * refinement_alignment: for an added phrase ("a red circle" -> "a big red circle"), a global
    alignment of the token sequences: aligned tokens take the source's map, new tokens keep their own.

Everything uses the tokenizer's own `model_max_length`, never a hard-coded 77.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch


def max_tokens(tokenizer) -> int:
    """The padded prompt length: the number of keys of every cross-attention layer."""
    length = getattr(tokenizer, "model_max_length", None)
    if not isinstance(length, int) or length <= 0 or length > 100_000:
        raise ValueError(
            f"the tokenizer has no usable model_max_length ({length!r}); set tokenizer.model_max_length "
            "to the number of positions of the text encoder"
        )
    return length


def prompt_token_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of `prompt` with its start and end tokens, unpadded; error if it is too long."""
    ids = tokenizer(prompt, padding=False, truncation=False)["input_ids"]
    limit = max_tokens(tokenizer)
    if len(ids) > limit:
        raise ValueError(
            f"the prompt {prompt!r} has {len(ids)} tokens (with the start and end tokens) but the tokenizer "
            f"allows at most {limit} (tokenizer.model_max_length): the text encoder would cut it. "
            "Shorten the prompt."
        )
    return list(ids)


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """Each token of the prompt as readable text, start and end tokens included (for plots)."""
    return [tokenizer.decode([token_id]).strip() for token_id in prompt_token_ids(tokenizer, prompt)]


@dataclass(frozen=True)
class _Word:
    text: str  # the word without surrounding punctuation, lower case
    start: int  # character span of that text in the prompt
    end: int


def _prompt_words(prompt: str) -> list[_Word]:
    """Whitespace-separated words, with leading/trailing punctuation cut off ("cat," -> "cat")."""
    words = []
    for chunk in re.finditer(r"\S+", prompt):
        core = re.search(r"[^\W_](?:.*[^\W_])?", chunk.group())
        if core is None:  # a chunk of punctuation only
            continue
        start = chunk.start() + core.start()
        words.append(_Word(core.group().lower(), start, start + len(core.group())))
    return words


def _special_positions(tokenizer, ids: list[int]) -> set[int]:
    mask = tokenizer.get_special_tokens_mask(ids, already_has_special_tokens=True)
    return {position for position, special in enumerate(mask) if special}


def _token_spans_from_offsets(tokenizer, prompt: str, ids: list[int]) -> list[tuple[int, int] | None]:
    encoding = tokenizer(prompt, padding=False, truncation=False, return_offsets_mapping=True)
    if list(encoding["input_ids"]) != ids:  # pragma: no cover - defensive
        raise RuntimeError("the tokenizer gave different ids with offsets")
    special = _special_positions(tokenizer, ids)
    return [None if i in special or a == b else (a, b) for i, (a, b) in enumerate(encoding["offset_mapping"])]


def _token_spans_by_decoding(tokenizer, prompt: str, ids: list[int]) -> list[tuple[int, int] | None]:
    """Character span of each token, found by decoding the tokens one by one (any tokenizer).

    Position 0 is the start token (bos) and is skipped like every special token; "##" (WordPiece)
    and end-of-word markers are removed by decode or here. A token whose text cannot be found
    where expected (an unknown-token placeholder) takes the rest of the current word.
    """
    text = prompt.lower()
    special = _special_positions(tokenizer, ids)
    spans: list[tuple[int, int] | None] = []
    cursor = 0
    for position, token_id in enumerate(ids):
        if position in special:
            spans.append(None)
            continue
        piece = tokenizer.decode([token_id]).strip().lower()
        piece = piece[2:] if piece.startswith("##") else piece
        while cursor < len(text) and text[cursor].isspace():
            cursor += 1
        if piece and text.startswith(piece, cursor):
            spans.append((cursor, cursor + len(piece)))
            cursor += len(piece)
        else:
            end = cursor
            while end < len(text) and not text[end].isspace():
                end += 1
            spans.append((cursor, end) if end > cursor else None)
            cursor = end
    return spans


def _token_spans(tokenizer, prompt: str, ids: list[int]) -> list[tuple[int, int] | None]:
    if getattr(tokenizer, "is_fast", False):
        try:
            return _token_spans_from_offsets(tokenizer, prompt, ids)
        except (NotImplementedError, TypeError, KeyError):  # pragma: no cover - tokenizer without offsets
            pass
    return _token_spans_by_decoding(tokenizer, prompt, ids)


def _tokens_in(spans: list[tuple[int, int] | None], start: int, end: int) -> list[int]:
    return [i for i, span in enumerate(spans) if span is not None and span[0] < end and span[1] > start]


def word_token_indices(tokenizer, prompt: str, word: str | int) -> list[int]:
    """Columns of the cross-attention maps that belong to `word` in `prompt`.

    Args:
        word: a word ("tiger"), several consecutive words ("red circle"), matched without regard
            to case or surrounding punctuation, every occurrence included; or an int, the position
            of the word in `prompt.split()`.

    Returns sorted token positions; position 0 is the start token, so the first word starts at 1.
    A BPE word gives several positions ("a tiger" -> [2, 3] for "ti", "ger</w>").
    """
    ids = prompt_token_ids(tokenizer, prompt)
    spans = _token_spans(tokenizer, prompt, ids)
    words = _prompt_words(prompt)
    if isinstance(word, int):
        chunks = prompt.split()
        if not -len(chunks) <= word < len(chunks):
            raise ValueError(f"word position {word} is outside the prompt {prompt!r}, which has {len(chunks)} words")
        chunk = list(re.finditer(r"\S+", prompt))[word]
        return _tokens_in(spans, chunk.start(), chunk.end())
    wanted = _prompt_words(word)
    if not wanted:
        raise ValueError(f"{word!r} is not a word (it has no letters or digits)")
    found: set[int] = set()
    for first in range(len(words) - len(wanted) + 1):
        window = words[first : first + len(wanted)]
        if [w.text for w in window] == [w.text for w in wanted]:
            found.update(_tokens_in(spans, window[0].start, window[-1].end))
    if not found:
        raise ValueError(
            f"{word!r} is not a word of the prompt {prompt!r}; its words are {[w.text for w in words]}. "
            "Check the spelling, and that the word is looked up in the right prompt "
            "(source words in the source prompt, target words in the target prompt)."
        )
    return sorted(found)


def prompt_word_tokens(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """Every word of the prompt with its token positions, in order (punctuation left out)."""
    ids = prompt_token_ids(tokenizer, prompt)
    spans = _token_spans(tokenizer, prompt, ids)
    return [(w.text, _tokens_in(spans, w.start, w.end)) for w in _prompt_words(prompt)]


def replacement_mapper(tokenizer, source: str, target: str) -> torch.Tensor:
    """Mapper of a word swap (P2P's AttentionReplace): target maps = source maps @ mapper.

    Returns a (tokens, tokens) matrix, tokens = tokenizer.model_max_length, with
    mapper[i, j] = 1 when target column j takes source column i. A word swap keeps every position,
    so the prompts must have the same number of words and each word the same number of tokens;
    then the mapper is the identity. Otherwise the prompts do not align position by position:
    use AttentionRefine, which aligns them.
    """
    source_ids = prompt_token_ids(tokenizer, source)
    target_ids = prompt_token_ids(tokenizer, target)
    source_words = prompt_word_tokens(tokenizer, source)
    target_words = prompt_word_tokens(tokenizer, target)
    problem = None
    if len(source_ids) != len(target_ids):
        problem = f"the source has {len(source_ids)} tokens and the target {len(target_ids)}"
    elif len(source_words) != len(target_words):
        problem = f"the source has {len(source_words)} words and the target {len(target_words)}"
    else:
        for (source_word, source_tokens), (target_word, target_tokens) in zip(source_words, target_words):
            if source_tokens != target_tokens:
                problem = (
                    f"{source_word!r} is {len(source_tokens)} token(s) at positions {source_tokens} but "
                    f"{target_word!r} is {len(target_tokens)} token(s) at positions {target_tokens}"
                )
                break
    if problem is not None:
        raise ValueError(
            f"a word swap (AttentionReplace) needs prompts whose tokens align position by position, but "
            f"{problem} ({source!r} -> {target!r}). Use AttentionRefine, which aligns the tokens of "
            "the two prompts (new tokens keep their own attention), or choose words of equal token counts."
        )
    return torch.eye(max_tokens(tokenizer))


class _Score:
    """Scores of P2P's global alignment: gap 0, match +1, mismatch -1."""

    gap, match, mismatch = 0, 1, -1


def _global_alignment(source: list[int], target: list[int]) -> list[int]:
    """Needleman-Wunsch alignment as in P2P's seq_aligner; for each target token, the aligned source
    position or -1 when the target token is new (inserted)."""
    rows, columns = len(source) + 1, len(target) + 1
    score = [[0] * columns for _ in range(rows)]
    trace = [[0] * columns for _ in range(rows)]  # 1 left (insertion), 2 up (deletion), 3 diagonal
    for j in range(1, columns):
        score[0][j], trace[0][j] = j * _Score.gap, 1
    for i in range(1, rows):
        score[i][0], trace[i][0] = i * _Score.gap, 2
    for i in range(1, rows):
        for j in range(1, columns):
            left = score[i][j - 1] + _Score.gap
            up = score[i - 1][j] + _Score.gap
            same = source[i - 1] == target[j - 1]
            diagonal = score[i - 1][j - 1] + (_Score.match if same else _Score.mismatch)
            score[i][j] = max(left, up, diagonal)
            trace[i][j] = 1 if score[i][j] == left else 2 if score[i][j] == up else 3
    target_to_source = [-1] * len(target)
    i, j = len(source), len(target)
    while i > 0 or j > 0:
        if trace[i][j] == 3:
            i, j = i - 1, j - 1
            target_to_source[j] = i
        elif trace[i][j] == 1:
            j -= 1
        else:
            i -= 1
    return target_to_source


def refinement_alignment(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Alignment of a phrase refinement (P2P's AttentionRefine), by global sequence alignment.

    Returns (mapper, alphas), both of length tokenizer.model_max_length:
      mapper[j] = source position aligned with target position j, or -1 for a new target token;
      alphas[j] = 1 where the target column takes the source's map, 0 where it keeps its own.
    Padding positions keep their own position, as in P2P's seq_aligner (a target padding column j takes the
    source's column j; only when the target is shorter than the source, column j + the difference, so that no
    padding column takes a word's map). A shallow text encoder such as shapes-tiny's gives each padding position
    its own embedding: shifting them by the inserted words hands every padding column its neighbour's attention,
    which speckles the whole image (measured with `pipelines/bench_p2p.py --kinds add`).
    Example (tiny BPE tokenizer): "a red circle" -> "a big red circle" gives
      mapper [0, 1, -1, 2, 3, 4, 6, 7, ...], alphas [1, 1, 0, 1, 1, 1, 1, ...].
    """
    source_ids = prompt_token_ids(tokenizer, source)
    target_ids = prompt_token_ids(tokenizer, target)
    length = max_tokens(tokenizer)
    aligned = _global_alignment(source_ids, target_ids)
    mapper = torch.empty(length, dtype=torch.long)
    mapper[: len(aligned)] = torch.tensor(aligned, dtype=torch.long)
    padding = torch.arange(len(target_ids), length)
    mapper[len(target_ids) :] = (padding + max(0, len(source_ids) - len(target_ids))).clamp(max=length - 1)
    alphas = (mapper >= 0).float()
    return mapper, alphas


def token_scales(tokenizer, prompt: str, scales: dict[str | int, float]) -> torch.Tensor:
    """P2P's equalizer: a (tokens,) vector of ones with each word's columns set to its scale."""
    equalizer = torch.ones(max_tokens(tokenizer))
    for word, scale in scales.items():
        equalizer[word_token_indices(tokenizer, prompt, word)] = float(scale)
    return equalizer
