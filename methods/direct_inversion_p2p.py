"""Direct Inversion ("PnP Inversion") + Prompt-to-Prompt (Ju et al., ICLR 2024), as PnPInversion runs it.

DDIM + P2P edits from x*_T, but the CFG source branch drifts off the inversion path x*_t (the
inversion ran at w = 1, editing runs at w = 7.5), so the source's attention maps that P2P injects
into the target describe a different image. Direct Inversion puts the source branch back on the path
after every step: with the source latent x^src_{t−Δ} after the DDIM step, the source row becomes
x^src_{t−Δ} + (x*_{t−Δ} − x^src_{t−Δ}) = x*_{t−Δ}; the target branch is left alone.

Reference: cure-lab/PnPInversion@f480116 — ``DirectInversion.invert`` (models/p2p/inversion.py:393-400) runs
the w = 1 DDIM inversion (:309-319), then ``offset_calculate`` (:375-391) walks the stored path once
more with the editing CFG and stores, per step i, d_i = x*_{t_i−Δ} − DDIM_prev(ε̂_w(x*_{t_i}), x*_{t_i})
while resetting its latent to x*_{t_i−Δ}; editing (``direct_inversion_p2p_guidance_forward``,
models/p2p/p2p_guidance_forward.py:136-173) adds d_i to the source row after each DDIM step, before the
controller's step callback (:113-115), with ∅ = the empty prompt for both branches (:170).

Deliberate deviation (same numbers, less work): the editing source row at step i is itself x*_{t_i}
(it starts at x*_T and is reset every step), and the controller never edits the source rows, so the
reference's d_i equals x*_{t_i−Δ} minus the source row of the editing step: the correction is applied
from the stored trajectory during editing instead of from offsets precomputed by a second pass. This
drops the reference's offset pass (N UNet calls of batch 4) and keeps the inversion independent of the
target prompt and of w (the reference's offsets also carry a target-branch row, used only by an ablation).

Cost: N inversion NFE + 4N editing NFE (2N at w = 1); the reference spends N + 4N on the inversion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Inversion
from methods.inversion_p2p import InversionP2P


@dataclass
class DirectInversionP2P(InversionP2P):
    name = "direct_inversion_p2p"
    version = "1"

    def inversion_tensors(self, trajectory: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """x*_T and the whole path, stored in editing order: path[i] = x*_{t_i − Δ} (i = 0 … N−1)."""
        return {"x_T": trajectory[-1], "path": torch.cat(trajectory[-2::-1])}

    def correct_step(self, inversion: Inversion, step: int, latents: torch.Tensor) -> torch.Tensor:
        """Source row x^src + (x*_{t−Δ} − x^src), written as x*_{t−Δ} itself (exact in floating point too);
        the target row is unchanged."""
        return torch.cat([inversion.tensors["path"][step : step + 1], latents[1:]])
