"""DDIM inversion at w = 1, then Prompt-to-Prompt editing from x*_T: the shared frame of the methods
that improve on DDIM + P2P by changing only how the *source* branch is kept on the inversion path
(Negative-prompt inversion: the unconditional rows; Direct Inversion: the source latent itself).

Inversion: N ascending DDIM inversion steps with the source prompt, conditional pass only (w = 1),
as every P2P-family inversion of PnPInversion does (``ddim_loop``, cure-lab/PnPInversion@f480116
models/p2p/inversion.py:55-65 and :309-319). Editing: the batch [source, target] from x*_T with
deterministic DDIM, the UNet batch [∅_src, ∅_tgt, c_src, c_tgt] and guidance w = ``guidance_scale``
on both branches (PnPInversion passes one ``guidance_scale``; run_editing_p2p.py:124); the P2P
controller (``methods.p2p``) edits the conditional rows of the target branch.

Subclasses choose the unconditional rows (``unconditional_rows``) and what happens to the latents
after each step (``correct_step``); ``declared_nfe`` states the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Inversion, ItemBatchedMethod, check_range, stack_tensors, target_rows
from methods.p2p import P2PEditHparams, attention_control
from methods.steps import cfg_passes, ddim_inversion_loop, ddim_sampling_loop


@dataclass
class InversionP2P(P2PEditHparams, ItemBatchedMethod):
    """Base class (not a registry entry): w = 1 DDIM inversion + P2P with PnPInversion's PIE-Bench settings."""

    inversion_fields = ("num_steps",)
    stochastic = False

    num_steps: int = 50  # N
    guidance_scale: float = 7.5  # w of both branches during editing
    cross_replace_steps: float | tuple[float, float] | dict[str, float | tuple[float, float]] = 0.4
    self_replace_steps: float | tuple[float, float] = 0.6
    p2p_mode: str = "refine"
    self_replace_max_resolution: int = 32
    blend_start: float = 0.2  # LocalBlend start_blend=0.2 (models/p2p/attention_control.py:123,145)

    def __post_init__(self) -> None:
        check_range(self, "num_steps", 1, 1000)
        check_range(self, "guidance_scale", 0.0, 100.0)
        self.check_p2p_hparams()

    # inversion ---------------------------------------------------------------------------
    @torch.no_grad()
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        pipe.scheduler.set_timesteps(self.num_steps)
        cond, uncond = pipe.encode_prompts(source_prompts), pipe.encode_prompts([""] * len(source_prompts))
        trajectory = ddim_inversion_loop(pipe, pipe.encode_image(images), cond, uncond, 1.0)
        meta = {"timesteps": [int(t) for t in pipe.scheduler.timesteps]}
        return [Inversion(self.inversion_tensors([x[b:b + 1] for x in trajectory]), dict(meta))
                for b in range(len(source_prompts))]

    def inversion_tensors(self, trajectory: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """What the edit needs from one item's trajectory [x*_0, …, x*_T] (here x*_T)."""
        return {"x_T": trajectory[-1]}

    # editing -----------------------------------------------------------------------------
    def unconditional_rows(self, pipe, cond: torch.Tensor) -> torch.Tensor:
        """The unconditional embeddings of one item's [source, target] (here the empty prompt's)."""
        return pipe.encode_prompts(["", ""])

    def correct_step(self, inversion: Inversion, step: int, latents: torch.Tensor) -> torch.Tensor:
        """One item's [source, target] latents after denoising step ``step`` (0-based), before P2P's step
        callback."""
        return latents

    @torch.no_grad()
    def edit_latents_batch(self, pipe, inversions: list[Inversion], items) -> torch.Tensor:
        """[source, target] latents of every item after editing, item-major (2B rows)."""
        pipe.scheduler.set_timesteps(self.num_steps)
        conds = [pipe.encode_prompts([item.source_prompt, item.target_prompt]) for item in items]
        uncond = torch.cat([self.unconditional_rows(pipe, cond) for cond in conds])
        x_T = stack_tensors(inversions, "x_T").repeat_interleave(2, dim=0)
        controller = self.p2p_batch_controller(pipe, items, self.num_steps)

        def on_step(latents: torch.Tensor) -> torch.Tensor:
            corrected = [self.correct_step(inversion, controller.cur_step, rows)
                         for inversion, rows in zip(inversions, latents.split(2))]
            return controller.step_callback(torch.cat(corrected))

        with attention_control(pipe, controller):
            return ddim_sampling_loop(pipe, x_T, torch.cat(conds), uncond, self.guidance_scale, on_step=on_step)

    def edit_latents(self, pipe, inversion: Inversion, item) -> torch.Tensor:
        """One item's [source, target] latents after editing."""
        return self.edit_latents_batch(pipe, [inversion], [item])

    def edit_batch(self, pipe, inversions, items, generators) -> torch.Tensor:
        return pipe.decode_latents(target_rows(self.edit_latents_batch(pipe, inversions, items), len(items)))

    def declared_nfe(self, item) -> tuple[int, int]:
        """(inversion, edit) NFE of one item: N (w = 1 inversion), then N UNet calls of batch 4 (2 at w = 1)."""
        return self.num_steps, 2 * cfg_passes(self.guidance_scale) * self.num_steps
