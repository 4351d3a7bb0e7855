"""The Prompt-to-Prompt controller, its step schedules, and the builder the P2P methods share.

``P2PController`` with a cross-attention mapping (``methods.p2p.mappers``) and an optional
``LocalBlend``; ``build_p2p_controller`` picks them from prompts and hyperparameters.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from methods.p2p.layers import PLACES, AttentionLayer, sd_equivalent_resolution
from methods.p2p.local_blend import LocalBlend
from methods.p2p.mappers import AttentionRefine, AttentionReplace, AttentionReweight, CrossAttentionMapping, equalizer
from methods.p2p.seq_aligner import MAX_TOKENS, prompt_words, word_token_indices
from methods.p2p.store import AttentionStore


def step_window(bounds, rows: int) -> tuple[int, int]:
    """(start, end) rows [int(s·rows), int(e·rows)) of a fraction or (start, end) pair of fractions."""
    start, end = (0.0, float(bounds)) if isinstance(bounds, (int, float)) else (float(bounds[0]), float(bounds[1]))
    if not 0.0 <= start <= end <= 1.0:
        raise ValueError(f"replacement steps {bounds!r}: expected a fraction in [0, 1] or a pair 0 ≤ start ≤ end ≤ 1")
    return int(start * rows), int(end * rows)


def cross_replace_schedule(tokenizer, prompts: Sequence[str], num_steps: int, cross_replace_steps) -> torch.Tensor:
    """α (num_steps+1, targets, 77) ∈ {0,1}: rows [int(s·(N+1)), int(e·(N+1))) are 1 (P2P α has N+1 rows).

    ``cross_replace_steps``: a fraction c (→ (0, c)), a (start, end) pair, or a mapping with a
    'default_' entry and per-word entries {word in the target prompt: fraction or pair}.
    """
    spec = dict(cross_replace_steps) if isinstance(cross_replace_steps, Mapping) else {"default_": cross_replace_steps}
    spec.setdefault("default_", (0.0, 1.0))
    rows = num_steps + 1
    alpha = torch.zeros(rows, len(prompts) - 1, MAX_TOKENS)
    start, end = step_window(spec.pop("default_"), rows)
    alpha[start:end] = 1
    for word, bounds in spec.items():
        start, end = step_window(bounds, rows)
        for k, prompt in enumerate(prompts[1:]):
            if word in prompt_words(prompt):
                tokens = word_token_indices(tokenizer, prompt, word)
                alpha[:, k, tokens] = 0
                alpha[start:end, k, tokens] = 1
    return alpha


class P2PController(AttentionStore):
    """Prompt-to-Prompt: branch 0 is the source, branches 1.. are targets; only conditional rows are edited.

    Step indexing (``cur_step`` = completed steps, advanced by ``step_callback``):
    - cross-attention: target ← α·mapping(source, target) + (1−α)·target with α = schedule[cur_step]
      (rows [int(c0·(N+1)), int(c1·(N+1))) are 1);
    - self-attention: target ← source for steps [int(N·s0), int(N·s1)) on maps ≤ ``self_max_resolution``².
    ``num_steps`` is the N of these formulas; EF-DDPM's p2pinv passes T while executing T−T_skip steps
    (the caller decides). Extension points for P2Plus: ``edit_unconditional`` (τ_u: use
    ``replace_self_attention`` there), ``value_context`` (StyleDiffusion's value input), and
    ``needs_probabilities``.
    """

    def __init__(self, prompts: Sequence[str], mapping: CrossAttentionMapping, cross_schedule: torch.Tensor,
                 self_window: tuple[int, int], self_max_resolution: int, local_blend: LocalBlend | None = None,
                 store_places: Sequence[str] = PLACES, store_max_resolution: int | None = 0,
                 store_self: bool = False) -> None:
        super().__init__(len(prompts), store_places, store_max_resolution, store_self)
        if len(prompts) < 2:
            raise ValueError(f"P2PController needs a source and at least one target prompt, got {list(prompts)}")
        self.mapping = mapping
        self.cross_schedule = cross_schedule
        self.self_window = self_window
        self.self_max_resolution = self_max_resolution
        self.local_blend = local_blend

    def records(self, layer: AttentionLayer) -> bool:
        blend = self.local_blend
        needed_by_blend = (blend is not None and layer.is_cross and layer.place in blend.places
                           and layer.resolution == blend.resolution)
        return needed_by_blend or super().records(layer)

    def cross_alpha(self) -> torch.Tensor:
        if self.cur_step >= self.cross_schedule.shape[0]:
            raise ValueError(f"P2PController: step {self.cur_step} is past the cross-replacement schedule of "
                             f"{self.cross_schedule.shape[0]} rows (num_steps + 1); num_steps is too small")
        return self.cross_schedule[self.cur_step]

    def replaces_self(self, layer: AttentionLayer) -> bool:
        start, end = self.self_window
        return not layer.is_cross and layer.resolution <= self.self_max_resolution and start <= self.cur_step < end

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        if layer.is_cross:
            return bool(self.cross_alpha().any()) or self.records(layer)
        return self.replaces_self(layer) or self.records(layer)

    @staticmethod
    def replace_self_attention(probs: torch.Tensor) -> torch.Tensor:
        """Every branch takes branch 0's self-attention (probs: (branches, H, Q, Q))."""
        return probs[:1].expand_as(probs)

    def edit_conditional(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        if layer.is_cross:
            alpha = self.cross_alpha().to(probs)[:, None, None, :]  # (targets, 1, 1, 77)
            if not alpha.any():
                return probs
            source, targets = probs[0], probs[1:]
            edited = self.mapping(source, targets) * alpha + targets * (1 - alpha)
            return torch.cat([probs[:1], edited])
        if self.replaces_self(layer):
            return self.replace_self_attention(probs)
        return probs

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        latents = super().step_callback(latents)
        if self.local_blend is not None:
            latents = self.local_blend(latents, self)
        return latents


P2P_MODES = ("auto", "auto_chars", "replace", "refine")


def build_p2p_controller(pipe, source_prompt: str, target_prompt: str, num_steps: int, cross_replace_steps,
                         self_replace_steps, mode: str = "auto", self_max_sd_resolution: int = 16,
                         blend_words: tuple[str, str] | None = None, blend_threshold: float = 0.3,
                         blend_start: float = 0.0, equalizer_params: Mapping | None = None,
                         controller_class: type[P2PController] = P2PController, **controller_kwargs) -> P2PController:
    """The P2P controller for [source, target] (the one builder the P2P methods share).

    mode 'auto' = the EF-DDPM reference rule: replace when the word counts match, else refine; 'auto_chars' =
    replace when the space-stripped prompts have equal character counts (PnPInversion's StyleDiffusion run).
    ``self_max_sd_resolution`` (16 for P2P, 32 for P2Plus) and LocalBlend's 16² maps are SD sizes
    mapped with ``sd_equivalent_resolution``. ``blend_start`` is a fraction of ``num_steps``.
    ``equalizer_params`` = {"words": [...], "values": [...]} (target-prompt words) adds AttentionReweight.
    """
    if mode not in P2P_MODES:
        raise ValueError(f"P2P mode={mode!r}: expected one of {P2P_MODES}")
    tokenizer, prompts = pipe.tokenizer, [source_prompt, target_prompt]
    same_words = len(prompt_words(source_prompt)) == len(prompt_words(target_prompt))
    if mode == "replace" and not same_words:
        raise ValueError(f"P2P mode='replace' needs prompts with the same number of words; source {source_prompt!r} "
                         f"has {len(prompt_words(source_prompt))}, target {target_prompt!r} has "
                         f"{len(prompt_words(target_prompt))}; use mode='refine' or 'auto'")
    same_chars = len(source_prompt.strip(" ")) == len(target_prompt.strip(" "))  # auto_chars (PnPInversion)
    use_replace = mode == "replace" or (mode == "auto" and same_words) or (mode == "auto_chars" and same_chars)
    if use_replace and not same_words:
        raise ValueError(f"P2P mode={mode!r} chose AttentionReplace for prompts with different word counts: "
                         f"{source_prompt!r}, {target_prompt!r}")
    mapping: CrossAttentionMapping = (AttentionReplace if use_replace else AttentionRefine)(tokenizer, prompts)
    if equalizer_params:
        scale = equalizer(tokenizer, target_prompt, list(equalizer_params["words"]), list(equalizer_params["values"]))
        mapping = AttentionReweight(scale[None], base=mapping)
    local_blend = None
    if blend_words is not None:
        local_blend = LocalBlend(tokenizer, prompts, list(blend_words), sd_equivalent_resolution(pipe.unet, 16),
                                 threshold=blend_threshold, start_step=int(blend_start * num_steps))
    return controller_class(
        prompts, mapping, cross_replace_schedule(tokenizer, prompts, num_steps, cross_replace_steps),
        step_window(self_replace_steps, num_steps),
        sd_equivalent_resolution(pipe.unet, self_max_sd_resolution), local_blend, **controller_kwargs,
    )
