"""Cross-attention mappings from the source branch to each target branch: replace, refine, reweight.

The reference P2P controllers (google/prompt-to-prompt, EF copy ``prompt_to_prompt/ptp_classes.py``)
are classes that both schedule and map; here the mapping is a separate object so one controller
class (and one P2Plus subclass of it) serves replace, refine and reweight.
"""

from __future__ import annotations

from typing import Sequence

import torch

from methods.p2p.seq_aligner import MAX_TOKENS, refinement_mapper, replacement_mapper, word_token_indices


class CrossAttentionMapping:
    """Maps source cross-attention (H, Q, 77) to proposals for the targets (T, H, Q, 77)."""

    def __call__(self, source: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class AttentionReplace(CrossAttentionMapping):
    """Word swap (same word count): target ← einsum('hqw,bwn->bhqn', source, mapper)."""

    def __init__(self, tokenizer, prompts: Sequence[str]) -> None:
        self.mapper = torch.stack([replacement_mapper(tokenizer, prompts[0], p) for p in prompts[1:]])

    def __call__(self, source, targets):
        return torch.einsum("hqw,bwn->bhqn", source, self.mapper.to(source))


class AttentionRefine(CrossAttentionMapping):
    """Added/changed phrases: aligned target tokens take the source column, new tokens keep their own."""

    def __init__(self, tokenizer, prompts: Sequence[str]) -> None:
        pairs = [refinement_mapper(tokenizer, prompts[0], p) for p in prompts[1:]]
        self.index = torch.stack([index for index, _ in pairs])  # (T, 77)
        self.weight = torch.stack([weight for _, weight in pairs])  # (T, 77)

    def __call__(self, source, targets):
        taken = source[:, :, self.index.to(source.device)].permute(2, 0, 1, 3)  # (T, H, Q, 77)
        weight = self.weight.to(source)[:, None, None, :]
        return taken * weight + targets * (1 - weight)


def equalizer(tokenizer, prompt: str, words: Sequence[str], values: Sequence[float]) -> torch.Tensor:
    """(77,) per-token scale: ``values[k]`` on the tokens of ``words[k]``, 1 elsewhere (P2P get_equalizer)."""
    if len(words) != len(values):
        raise ValueError(f"equalizer: {len(words)} words {list(words)} but {len(values)} values {list(values)}")
    scale = torch.ones(MAX_TOKENS)
    for word, value in zip(words, values):
        scale[word_token_indices(tokenizer, prompt, word)] = float(value)
    return scale


class AttentionReweight(CrossAttentionMapping):
    """Scale target token columns by an equalizer, on top of ``base`` (replace/refine) or the source maps."""

    def __init__(self, equalizers: torch.Tensor, base: CrossAttentionMapping | None = None) -> None:
        self.equalizers = equalizers  # (T, 77)
        self.base = base

    def __call__(self, source, targets):
        proposal = source.expand_as(targets) if self.base is None else self.base(source, targets)
        return proposal * self.equalizers.to(source)[:, None, None, :]
