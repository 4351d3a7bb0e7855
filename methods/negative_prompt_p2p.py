"""Negative-prompt inversion + Prompt-to-Prompt (Miyake et al., 2023), as PnPInversion runs it.

Null-text inversion optimises, per step, an unconditional embedding ∅_t that keeps the CFG source
branch on the DDIM inversion path. Negative-prompt inversion replaces that optimisation by its
closed-form guess ∅_t := c_src (the source-prompt embedding) for every t: the source branch's CFG
prediction ε(c_src) + w(ε(c_src) − ε(c_src)) = ε(c_src) is then the w = 1 prediction the inversion
used, for any w. No optimisation, no extra UNet pass.

Reference: cure-lab/PnPInversion@f480116 — ``NegativePromptInversion.invert`` (models/p2p/inversion.py:78-101:
w = 1 DDIM inversion, ``uncond_embeddings = [cond_embeddings] * num_ddim_steps`` at :100, ``npi_interp``
0 so no slerp at :98-99), editing by ``proximal_guidance_forward`` with ``prox=None`` and
``recon_lr=0`` (models/p2p/proximal_guidance_forward.py:156-161: context [∅_t, ∅_t, c_src, c_tgt] with
∅_t = c_src for both branches; plain CFG and DDIM step at :74-76). Frame and settings: ``methods.inversion_p2p``.

Cost: N inversion NFE + 4N editing NFE (2N at w = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.inversion_p2p import InversionP2P


@dataclass
class NegativePromptP2P(InversionP2P):
    name = "negative_prompt_p2p"
    version = "1"

    def unconditional_rows(self, pipe, cond: torch.Tensor) -> torch.Tensor:
        """∅ := c_src for both branches (PnPInversion gives the target branch the source's ∅_t too)."""
        return cond[:1].expand_as(cond)
