"""Prompt words → CLIP token positions, and token alignment between a source and a target prompt.

Kept apart from the controllers as google/prompt-to-prompt keeps ``seq_aligner.py``: the replace
mapper (same word count) and the refine mapper (global alignment of the token sequences).
"""

from __future__ import annotations

from typing import Sequence

import torch

MAX_TOKENS = 77  # CLIP context length (the references' MAX_NUM_WORDS)


def prompt_words(prompt: str) -> list[str]:
    """Words as the references split them: on single spaces."""
    return prompt.split(" ")


def word_token_spans(tokenizer, prompt: str) -> list[list[int]]:
    """For each word of ``prompt``, the positions of its BPE tokens in the tokenized prompt (BOS = 0).

    CLIP pre-tokenizes on whitespace, so tokenizing word by word gives the prompt's tokens; this is
    checked against the whole-prompt tokenization.
    """
    spans, position = [], 1
    for word in prompt_words(prompt):
        count = len(tokenizer(word).input_ids) - 2  # without BOS/EOS
        spans.append(list(range(position, position + count)))
        position += count
    whole = len(tokenizer(prompt).input_ids) - 2
    if position - 1 != whole:
        raise ValueError(f"prompt {prompt!r}: word-by-word tokenization gives {position - 1} tokens, "
                         f"the whole prompt {whole}; cannot locate words")
    if position >= MAX_TOKENS:
        raise ValueError(f"prompt {prompt!r} has {position - 1} tokens; at most {MAX_TOKENS - 2} fit in CLIP's context")
    return spans


def word_token_indices(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions of every occurrence of ``word`` (a word or several space-separated words)."""
    words, spans = prompt_words(prompt), word_token_spans(tokenizer, prompt)
    wanted = set(prompt_words(word))
    missing = wanted - set(words)
    if missing:
        raise ValueError(f"word(s) {sorted(missing)} not found in prompt {prompt!r} (words: {words})")
    return [pos for w, span in zip(words, spans) if w in wanted for pos in span]


def replacement_mapper(tokenizer, source: str, target: str) -> torch.Tensor:
    """(77, 77) matrix M with target_attention[..., n] = Σ_w source_attention[..., w] · M[w, n].

    Words are compared position by position (the prompts must have the same word count). Unchanged
    words map their tokens one to one. A changed word spreads each of its source tokens evenly over
    its target tokens (1/len each; one to one when the counts match). After the last changed word
    every remaining target position j maps to itself, as the reference `seq_aligner.get_replacement_mapper`
    walks it (its walk stops when either index reaches 77, so when the source is k tokens longer the
    last k positions stay unmapped); this only matters when a swap changes the token count.
    """
    source_words, target_words = prompt_words(source), prompt_words(target)
    if len(source_words) != len(target_words):
        raise ValueError(f"AttentionReplace needs prompts with the same number of words: source {source!r} has "
                         f"{len(source_words)}, target {target!r} has {len(target_words)}; use the 'refine' mode")
    source_spans, target_spans = word_token_spans(tokenizer, source), word_token_spans(tokenizer, target)
    changed = [i for i, (a, b) in enumerate(zip(source_words, target_words)) if a != b]
    mapper = torch.zeros(MAX_TOKENS, MAX_TOKENS)
    mapper[0, 0] = 1  # BOS
    last = changed[-1] if changed else -1
    for i in range(last + 1):
        src, tgt = source_spans[i], target_spans[i]
        if len(src) == len(tgt):
            mapper[src, tgt] = 1
        else:
            for n in tgt:
                mapper[src, n] = 1 / len(tgt)
    source_next = source_spans[last][-1] + 1 if changed else 1
    target_next = target_spans[last][-1] + 1 if changed else 1
    tail = torch.arange(target_next, target_next + MAX_TOKENS - max(source_next, target_next))
    mapper[tail, tail] = 1
    return mapper


def align_tokens(source_ids: Sequence[int], target_ids: Sequence[int]) -> list[int]:
    """Global alignment (match +1, mismatch −1, gap 0): for each target token its source token or −1.

    Dynamic programming over prefixes; on score ties the traceback prefers, in this order, leaving
    the target token unaligned, skipping the source token, then pairing them — the preference order
    of the reference aligner, so ties resolve the same way.
    """
    rows, cols = len(source_ids) + 1, len(target_ids) + 1
    score = [[0] * cols for _ in range(rows)]  # gap = 0, so the borders are 0
    move = [["target"] * cols for _ in range(rows)]
    for i in range(1, rows):
        move[i][0] = "source"
    for i in range(1, rows):
        for j in range(1, cols):
            pair = score[i - 1][j - 1] + (1 if source_ids[i - 1] == target_ids[j - 1] else -1)
            score[i][j] = max(score[i][j - 1], score[i - 1][j], pair)
            if score[i][j] == score[i][j - 1]:
                move[i][j] = "target"  # target token j−1 unaligned
            elif score[i][j] == score[i - 1][j]:
                move[i][j] = "source"  # source token i−1 skipped
            else:
                move[i][j] = "pair"
    aligned = [-1] * len(target_ids)
    i, j = rows - 1, cols - 1
    while i > 0 or j > 0:
        step = move[i][j]
        if step == "pair":
            aligned[j - 1] = i - 1
            i, j = i - 1, j - 1
        elif step == "target":
            j -= 1
        else:
            i -= 1
    return aligned


def refinement_mapper(tokenizer, source: str, target: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(index (77,), weight (77,)): target token n takes source column index[n] where weight[n] = 1.

    Tokens (BOS…EOS) are globally aligned; unaligned target tokens keep their own attention
    (weight 0). Padding positions after the target's EOS map to themselves (weight 1), as in the
    reference `seq_aligner.get_refinement_mapper`.
    """
    source_ids, target_ids = tokenizer(source).input_ids, tokenizer(target).input_ids
    aligned = align_tokens(source_ids, target_ids)
    index = torch.arange(MAX_TOKENS)
    weight = torch.ones(MAX_TOKENS)
    index[: len(aligned)] = torch.tensor([max(a, 0) for a in aligned])
    weight[: len(aligned)] = torch.tensor([float(a >= 0) for a in aligned])
    return index, weight
