"""LocalBlend: keep the latents outside the edited words' region equal to the source branch."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from methods.p2p.seq_aligner import MAX_TOKENS, word_token_indices
from methods.p2p.store import AttentionStore


class LocalBlend:
    """Keep the latents outside the edited words' region equal to the source branch.

    mask = cross maps of the blend words (store sum over steps, mean over the chosen layers and heads)
    → 3×3 max-pool → nearest resize to the latent size → divide by the max → > threshold; union of
    the source mask and each target mask; x_t^k ← x_t^src + mask·(x_t^k − x_t^src). Applied after
    step ``start_step`` (NTI notebook: int(0.2·N); original P2P: 0).
    """

    def __init__(self, tokenizer, prompts: Sequence[str], words: Sequence[str], resolution: int,
                 threshold: float = 0.3, start_step: int = 0, places: Sequence[str] = ("down", "up")) -> None:
        if len(words) != len(prompts):
            raise ValueError(f"LocalBlend: {len(words)} blend words {list(words)} for {len(prompts)} prompts")
        self.word_alpha = torch.zeros(len(prompts), MAX_TOKENS)
        for k, (prompt, word) in enumerate(zip(prompts, words)):
            self.word_alpha[k, word_token_indices(tokenizer, prompt, word)] = 1
        self.resolution, self.threshold, self.start_step, self.places = resolution, threshold, start_step, tuple(places)

    def mask(self, store: AttentionStore, latent_hw: tuple[int, int]) -> torch.Tensor:
        res = self.resolution
        maps = [m.reshape(m.shape[0], m.shape[1], res, res, MAX_TOKENS)
                for m in store.maps("cross", self.places, res, summed=True)]
        maps = torch.cat(maps, dim=1)  # (branches, layers·heads, res, res, 77)
        word_maps = (maps * self.word_alpha.to(maps)[:, None, None, None, :]).sum(-1).mean(1, keepdim=True)
        pooled = F.max_pool2d(word_maps, kernel_size=3, stride=1, padding=1)
        mask = F.interpolate(pooled, size=latent_hw)
        mask = mask / mask.amax(dim=(2, 3), keepdim=True)
        mask = mask > self.threshold
        return (mask[:1] | mask).to(maps.dtype)

    def __call__(self, latents: torch.Tensor, store: AttentionStore) -> torch.Tensor:
        if store.cur_step <= self.start_step:
            return latents
        mask = self.mask(store, tuple(latents.shape[2:])).to(latents)
        return latents[:1] + mask * (latents - latents[:1])
