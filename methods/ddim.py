"""DDIM inversion, then DDIM sampling with the target prompt (no attention control).

The EF-DDPM paper's "DDIM" baseline. Inversion runs N ascending DDIM inversion steps with the source
prompt and guidance ``inversion_guidance_scale`` (w=1 in P2P/NTI/StyleDiffusion — conditional pass
only; w=3.5 in the EF-DDPM repo's `ddim`/`p2pddim` modes); editing runs N deterministic DDIM steps
(η=0) from x_T with the target prompt and guidance ``guidance_scale``. Presets:
``conf/method/ddim.yaml`` (P2P/NTI style) and ``conf/method/ddim_ef.yaml`` (EF-DDPM repo style).

Cost: N·(1 if w_inv = 1 else 2) inversion NFE + 2N editing NFE (N when guidance_scale = 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Inversion, ItemBatchedMethod, check_range, split_inversions, stack_tensors, target_rows
from methods.steps import cfg_passes, ddim_inversion_loop, ddim_sampling_loop


@dataclass
class DDIM(ItemBatchedMethod):
    name = "ddim"
    version = "1"
    inversion_fields = ("num_steps", "inversion_guidance_scale")
    stochastic = False

    num_steps: int = 50  # N (P2P/NTI notebooks; EF repo uses 100)
    inversion_guidance_scale: float = 1.0  # w of DDIM inversion (1: P2P/NTI; 3.5: EF repo)
    guidance_scale: float = 7.5  # w of the edit with the target prompt

    def __post_init__(self) -> None:
        check_range(self, "num_steps", 1, 1000)
        check_range(self, "inversion_guidance_scale", 0.0, 100.0)
        check_range(self, "guidance_scale", 0.0, 100.0)

    @torch.no_grad()
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        pipe.scheduler.set_timesteps(self.num_steps)
        cond, uncond = pipe.encode_prompts(source_prompts), pipe.encode_prompts([""] * len(source_prompts))
        trajectory = ddim_inversion_loop(pipe, pipe.encode_image(images), cond, uncond, self.inversion_guidance_scale)
        meta = {"timesteps": [int(t) for t in pipe.scheduler.timesteps]}
        return split_inversions({"x_T": trajectory[-1]}, meta, len(source_prompts))

    @torch.no_grad()
    def edit_latents_batch(self, pipe, inversions: list[Inversion], items) -> torch.Tensor:
        """The edited latents of B items, one row per branch, item-major."""
        pipe.scheduler.set_timesteps(self.num_steps)
        cond = pipe.encode_prompts([item.target_prompt for item in items])
        uncond = pipe.encode_prompts([""] * len(items))
        return ddim_sampling_loop(pipe, stack_tensors(inversions, "x_T"), cond, uncond, self.guidance_scale)

    def edit_latents(self, pipe, inversion: Inversion, item) -> torch.Tensor:
        """One item's edited latents, one row per branch."""
        return self.edit_latents_batch(pipe, [inversion], [item])

    def edit_batch(self, pipe, inversions, items, generators) -> torch.Tensor:
        return pipe.decode_latents(target_rows(self.edit_latents_batch(pipe, inversions, items), len(items)))

    def declared_nfe(self, item) -> tuple[int, int]:
        steps = self.num_steps
        return cfg_passes(self.inversion_guidance_scale) * steps, cfg_passes(self.guidance_scale) * steps
