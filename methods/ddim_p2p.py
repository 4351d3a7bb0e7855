"""DDIM inversion + Prompt-to-Prompt (Hertz et al., ICLR 2023), methods spec §2.1.

Inversion is ``methods.ddim.DDIM``'s (same hparams, same cache entry shape). Editing runs the batch
[source, target] from the same x_T with deterministic DDIM; the UNet batch holds the unconditional
and conditional rows of both branches, [∅, ∅, c_src, c_tgt], with per-branch guidance
[source_guidance_scale, guidance_scale] (P2P/NTI: 7.5 for both; EF repo `p2pddim`: [inversion_guidance_scale, guidance_scale]).
The P2P controller (``methods.p2p``) edits only the conditional rows of the target branch,
with N = num_steps in its step fractions. The reference EF copy runs the two passes
separately (LOW_RESOURCE=True); batching them gives the same math.

Cost: inversion as DDIM; editing 4N NFE (N UNet calls of batch 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import check_range
from methods.ddim import DDIM
from methods.p2p import P2PEditHparams, attention_control
from methods.steps import ddim_sampling_loop


@dataclass
class DDIMP2P(P2PEditHparams, DDIM):
    name = "ddim_p2p"
    version = "1"

    source_guidance_scale: float = 7.5  # w of the source branch during editing

    def __post_init__(self) -> None:
        DDIM.__post_init__(self)
        check_range(self, "source_guidance_scale", 0.0, 100.0)
        self.check_p2p_hparams()

    @torch.no_grad()
    def edit_latents(self, pipe, inversion, item) -> torch.Tensor:
        """[source, target] latents after editing."""
        pipe.scheduler.set_timesteps(self.num_steps)
        cond = pipe.encode_prompts([item.source_prompt, item.target_prompt])
        uncond = pipe.encode_prompts(["", ""])
        scales = torch.tensor([self.source_guidance_scale, self.guidance_scale])
        x_T = inversion.tensors["x_T"].expand(2, -1, -1, -1)
        controller = self.p2p_controller(pipe, item, self.num_steps)
        with attention_control(pipe, controller):
            return ddim_sampling_loop(pipe, x_T, cond, uncond, scales, on_step=controller.step_callback)

    def declared_nfe(self, item) -> tuple[int, int]:
        return DDIM.declared_nfe(self, item)[0], 4 * self.num_steps
