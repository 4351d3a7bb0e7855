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

Cost: inversion N forward passes (DDIM, w=1) + Σ_i (k_i + 2) forward and Σ_i k_i backward UNet passes,
k_i = the inner iterations actually run at step i (``Inversion.meta["iterations"]``); editing 4N.

``optimise_timestep`` and ``early_stop_threshold`` are the inner loop shared with StyleDiffusion
(``methods.stylediffusion_p2plus``), which the reference also built on this loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from methods.base import Inversion, Method, check_range, target_rows
from methods.p2p import ItemBatchController, P2PController, P2PEditHparams, attention_control
from methods.steps import classifier_free_guidance, ddim_inversion_loop, ddim_sampling_loop, ddim_step


def adam_learning_rate(step_index: int) -> float:
    """lr_i = 1e-2 · (1 − i/100) (NTI and StyleDiffusion references)."""
    return 1e-2 * (1.0 - step_index / 100.0)


def early_stop_threshold(epsilon: float, step_index: int) -> float:
    """Stop the inner loop of step i once loss < ε + i·2e-5 (NTI and StyleDiffusion references)."""
    return epsilon + step_index * 2e-5


@dataclass
class TimestepFit:
    """What one timestep's inner optimisation did."""

    iterations: int  # Adam steps actually taken (≤ the budget; fewer when the early stop fired)
    initial_loss: float  # the loss of the first iteration (before any update at this timestep)
    final_loss: float  # the loss of the last iteration (the one tested against the threshold)


def optimise_timestep(parameters: Iterable[torch.Tensor], loss_fn: Callable[[], torch.Tensor], step_index: int,
                      budget: int, epsilon: float) -> TimestepFit:
    """The reference inner loop: a fresh Adam(lr_i) over ``parameters``; per iteration compute the loss,
    take one Adam step, then stop if loss < ε + i·2e-5. Returns the iterations run and the losses."""
    optimiser = torch.optim.Adam(list(parameters), lr=adam_learning_rate(step_index))
    threshold = early_stop_threshold(epsilon, step_index)
    initial = None
    for iteration in range(1, budget + 1):
        loss = loss_fn()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        value = loss.item()
        initial = value if initial is None else initial
        if value < threshold:
            break
    return TimestepFit(iteration, initial, value)


def fit_meta(fits: list[TimestepFit]) -> dict[str, list]:
    """Inversion.meta entries of an optimisation: per-step iterations, final and initial losses."""
    return {"iterations": [f.iterations for f in fits], "losses": [f.final_loss for f in fits],
            "initial_losses": [f.initial_loss for f in fits]}


@dataclass
class NullTextP2P(P2PEditHparams, Method):
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
    def invert(self, pipe, image, source_prompt, generator) -> Inversion:
        pipe.scheduler.set_timesteps(self.num_steps)
        cond, uncond = pipe.encode_prompts([source_prompt, ""]).chunk(2)
        with torch.no_grad():
            trajectory = ddim_inversion_loop(pipe, pipe.encode_image(image), cond, uncond, 1.0)
        nulls, fits = self.null_optimisation(pipe, trajectory, cond, uncond)
        return Inversion({"x_T": trajectory[-1], "null_embeddings": torch.cat(nulls)},
                         {"timesteps": [int(t) for t in pipe.scheduler.timesteps], **fit_meta(fits)})

    def null_optimisation(self, pipe, trajectory: list[torch.Tensor], cond: torch.Tensor,
                          uncond: torch.Tensor) -> tuple[list[torch.Tensor], list[TimestepFit]]:
        """∅_t for every step (each (1,77,D)) and what each step's optimisation did (module doc, step 2)."""
        scheduler, w = pipe.scheduler, self.guidance_scale
        latent, null = trajectory[-1], uncond.clone()
        nulls, fits = [], []
        for i, t in enumerate(scheduler.timesteps):
            target = trajectory[len(trajectory) - i - 2]  # x*_{t−Δ}
            with torch.no_grad():
                eps_cond = pipe.unet_eps(latent, t, cond)  # ε_c, once per step
            null = null.detach().clone().requires_grad_(True)  # warm start from ∅_{t+Δ}; Adam updates it in place

            def loss_fn(latent=latent, t=t, eps_cond=eps_cond, target=target, null=null) -> torch.Tensor:
                eps = classifier_free_guidance(pipe.unet_eps(latent, t, null), eps_cond, w)
                return F.mse_loss(ddim_step(scheduler, eps, int(t), latent), target)

            fits.append(optimise_timestep([null], loss_fn, i, self.num_inner_steps, self.early_stop_epsilon))
            null = null.detach()
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
        reconstructions). The optimisation stays per item; the edits of B items share each UNet call."""
        pipe.scheduler.set_timesteps(self.num_steps)
        cond = pipe.encode_prompts([prompt for item in items for prompt in (item.source_prompt, item.target_prompt)])
        x_T = torch.cat([inversion.tensors["x_T"] for inversion in inversions]).repeat_interleave(2, dim=0)
        controller = ItemBatchController([self.edit_controller(pipe, inversion, item)
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

    def edit(self, pipe, inversion, item, generator) -> torch.Tensor:
        return self.edit_batch(pipe, [inversion], [item], [generator])[0]
