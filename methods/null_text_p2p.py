"""Null-text inversion + Prompt-to-Prompt (Mokady et al., CVPR 2023); docs/methods.md#presets.

Inversion (the reference ``NullInversion``, PnPInversion `models/p2p/inversion.py` L113-241 =
StyleDiffusion `p2plus/null_text_w_p2plus.py` L424-578):

1. DDIM inversion at w = 1 (conditional pass only) → trajectory x*_0, x*_{t_1}, …, x*_{t_N}.
2. Null-text optimisation, z̄ ← x*_T, ∅ ← embedding of "", for i = 0..N−1 (t = timesteps[i], descending):
   - ε_c = ε_θ(z̄, t, c_src), once per step, no grad;
   - a fresh Adam([∅], lr = 1e-2·(1 − i/100)), ∅ warm-started from the previous step's ∅;
   - up to ``num_inner_steps`` iterations of
     loss = MSE(DDIM_prev(ε_θ(z̄,t,∅) + w(ε_c − ε_θ(z̄,t,∅)), t, z̄), x*_{t−Δ}), an Adam step, and a stop
     as soon as loss < ε + i·2e-5;
   - ∅_t ← ∅ (stored), z̄ ← DDIM_prev(CFG(∅_t), t, z̄) (no grad).

The reference recomputes ε_c together with ε_θ(z̄,t,∅_t) for the last update; ε_c is unchanged
(same z̄, t, c_src), so it is reused here: same numbers, one UNet pass fewer per step.

Editing: the batch [source, target] from x*_T with CFG w for both branches, the UNet batch
[∅_t, ∅_t, c_src, c_tgt] at step t (the *same* optimised ∅_t for both branches, as the reference
`text2image_ldm_stable` does), and a P2P controller (``methods.p2p``) on the conditional rows.

Item batching (``invert_batch``): B items run the steps above together — one UNet call per DDIM
inversion step, per ε_c, per inner iteration (the rows of the items still optimising) and per z̄ update —
each item with its own ∅, its own Adam and its own early stop (``methods.timestep_fit.optimise_items``,
shared with StyleDiffusion).

Cost: inversion N forward passes (DDIM, w=1) + Σ_i (k_i + 2) forward and Σ_i k_i backward UNet passes,
k_i = the inner iterations actually run at step i (``Inversion.meta["iterations"]``); editing 4N.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Inversion, ItemBatchedMethod, check_range, target_rows
from methods.p2p import P2PController, P2PEditHparams, attention_control, batch_controller
from methods.steps import classifier_free_guidance, ddim_inversion_loop, ddim_sampling_loop, ddim_step
from methods.timestep_fit import TimestepFit, item_fit_meta, item_rows, optimise_items, per_item_mse


def source_and_null_embeddings(pipe, source_prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_src, ∅) of B items, each (B, 77, D), from one text-encoder call [prompts…, "", …]."""
    return pipe.encode_prompts([*source_prompts, *[""] * len(source_prompts)]).chunk(2)


@dataclass
class NullTextP2P(P2PEditHparams, ItemBatchedMethod):
    """Null-text inversion, then P2P editing with the per-step optimised ∅_t.

    Defaults: the NTI notebook (50 steps, w 7.5, 10 inner steps, ε 1e-5; editing example
    cross_replace_steps .8, self_replace_steps .5, LocalBlend from 20% of the steps; docs/methods.md#presets).
    """

    name = "null_text_p2p"
    version = "1"
    inversion_fields = ("num_steps", "guidance_scale", "num_inner_steps", "early_stop_epsilon")
    stochastic = False

    num_steps: int = 50  # N (NUM_DDIM_STEPS of the notebook)
    guidance_scale: float = 7.5  # w, used by the optimisation and by editing (GUIDANCE_SCALE)
    num_inner_steps: int = 10  # Adam iterations per timestep at most
    early_stop_epsilon: float = 1e-5  # ε of the early stop loss < ε + i·2e-5
    cross_replace_steps: float | tuple[float, float] | dict[str, float | tuple[float, float]] = 0.8
    self_replace_steps: float | tuple[float, float] = 0.5
    self_replace_max_resolution: int = 32  # NTI notebook copies replace self-attention up to 32²
    blend_start: float = 0.2  # NTI notebook LocalBlend(start_blend=0.2), used when local_blend=True

    def __post_init__(self) -> None:
        check_range(self, "num_steps", 1, 1000)
        check_range(self, "guidance_scale", 0.0, 100.0)
        check_range(self, "num_inner_steps", 1, 100_000)
        check_range(self, "early_stop_epsilon", 0.0, 1e6)
        self.check_p2p_hparams()

    # inversion ---------------------------------------------------------------------------
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        pipe.scheduler.set_timesteps(self.num_steps)
        cond, uncond = source_and_null_embeddings(pipe, source_prompts)
        with torch.no_grad():
            trajectory = ddim_inversion_loop(pipe, pipe.encode_image(images), cond, uncond, 1.0)
        nulls, fits = self.null_optimisation(pipe, trajectory, cond, uncond)
        timesteps = [int(t) for t in pipe.scheduler.timesteps]
        return [Inversion({"x_T": trajectory[-1][b:b + 1], "null_embeddings": torch.stack([null[b] for null in nulls])},
                          {"timesteps": timesteps, **item_fit_meta(fits, b)}) for b in range(len(source_prompts))]

    def null_optimisation(self, pipe, trajectory: list[torch.Tensor], cond: torch.Tensor, uncond: torch.Tensor,
                          ) -> tuple[list[torch.Tensor], list[list[TimestepFit]]]:
        """∅_t of every step for the B items (each (B,77,D)) and what each step's optimisation did per item
        (module doc, step 2; ``fits[i][b]``)."""
        scheduler, w = pipe.scheduler, self.guidance_scale
        latent, item_nulls = trajectory[-1], list(uncond.split(1))
        nulls, fits = [], []
        for i, t in enumerate(scheduler.timesteps):
            target = trajectory[len(trajectory) - i - 2]  # x*_{t−Δ}
            with torch.no_grad():
                eps_cond = pipe.unet_eps(latent, t, cond)  # ε_c, once per step
            # warm start from ∅_{t+Δ}; each item's Adam updates its own ∅ in place
            item_nulls = [null.detach().clone().requires_grad_(True) for null in item_nulls]

            def item_losses(active: list[int], latent=latent, t=t, eps_cond=eps_cond, target=target,
                            item_nulls=item_nulls) -> torch.Tensor:
                z = item_rows(latent, active)
                eps_null = pipe.unet_eps(z, t, torch.cat([item_nulls[b] for b in active]))
                eps = classifier_free_guidance(eps_null, item_rows(eps_cond, active), w)
                return per_item_mse(ddim_step(scheduler, eps, int(t), z), item_rows(target, active))

            fits.append(optimise_items([[null] for null in item_nulls], item_losses, i, self.num_inner_steps,
                                       self.early_stop_epsilon))
            null = torch.cat(item_nulls).detach()
            nulls.append(null)
            with torch.no_grad():  # z̄ ← DDIM_prev(ε_θ(z̄,t,∅_t) + w(ε_c − ε_θ(z̄,t,∅_t)))
                eps = classifier_free_guidance(pipe.unet_eps(latent, t, null), eps_cond, w)
                latent = ddim_step(scheduler, eps, int(t), latent)
        return nulls, fits

    # editing -----------------------------------------------------------------------------
    def unconditional_embeddings(self, pipe, inversion: Inversion) -> list[torch.Tensor]:
        """The unconditional rows [∅_t, ∅_t] of each step (one ∅_t for both branches)."""
        return [null.expand(2, -1, -1) for null in inversion.tensors["null_embeddings"].unsqueeze(1)]

    def edit_controller(self, pipe, inversion: Inversion, item) -> P2PController:
        return self.p2p_controller(pipe, item, self.num_steps)

    @torch.no_grad()
    def edit_latents_batch(self, pipe, inversions: list[Inversion], items) -> torch.Tensor:
        """[source, target] latents of every item after editing, item-major (the source rows are the
        reconstructions); the edits of B items share each UNet call."""
        pipe.scheduler.set_timesteps(self.num_steps)
        cond = pipe.encode_prompts([prompt for item in items for prompt in (item.source_prompt, item.target_prompt)])
        x_T = torch.cat([inversion.tensors["x_T"] for inversion in inversions]).repeat_interleave(2, dim=0)
        controller = batch_controller([self.edit_controller(pipe, inversion, item)
                                      for inversion, item in zip(inversions, items)])
        per_item = [self.unconditional_embeddings(pipe, inversion) for inversion in inversions]
        if isinstance(per_item[0], torch.Tensor):  # one ∅ for every step (StyleDiffusion)
            uncond = torch.cat(per_item)
        else:  # ∅_t per step: [∅_t of item 1 (×2), item 2, …]
            uncond = [torch.cat(step) for step in zip(*per_item)]
        with attention_control(pipe, controller):
            return ddim_sampling_loop(pipe, x_T, cond, uncond, self.guidance_scale, on_step=controller.step_callback)

    def edit_latents(self, pipe, inversion: Inversion, item) -> torch.Tensor:
        """One item's [source, target] latents after editing."""
        return self.edit_latents_batch(pipe, [inversion], [item])

    def edit_batch(self, pipe, inversions, items, generators) -> torch.Tensor:
        return pipe.decode_latents(target_rows(self.edit_latents_batch(pipe, inversions, items), len(items)))
