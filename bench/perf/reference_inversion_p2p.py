"""Reference-shaped baselines of the w = 1 inversion + P2P methods, in PnPInversion's loop shape
(cure-lab/PnPInversion@f480116; the method modules cite the lines).

- **Negative-prompt inversion**: ``NegativePromptInversion.ddim_loop`` (conditional pass only), then
  ``proximal_guidance_forward`` with ``prox=None``: P2P's batched CFG with ∅_t = c_src for both
  branches, every attention layer explicit (``ReferenceAttention``).
- **Direct Inversion**: the w = 1 DDIM inversion, then ``offset_calculate``: a second walk along the
  stored path with batched CFG on [source, target] (N UNet calls of batch 4), storing the offsets
  d_i = x*_{t_i−Δ} − DDIM_prev(ε̂_w(x*_{t_i})); editing adds d_i's source row to the source latent after
  every DDIM step, before the controller's step callback. The harness applies the same correction from
  the stored path (no offset pass); in exact arithmetic the two agree.

PnPInversion also runs a reconstruction pass before each edit (for its side-by-side figure); like the
other P2P baselines here, it is left out (it does not change the edit).
"""

from __future__ import annotations

import torch

from bench.perf.reference_hooks import ReferenceAttention, batched_cfg
from bench.perf.reference_loops import ddim_inversion_reference, text2image_reference
from methods.p2p import attention_control
from methods.steps import ddim_inversion_step, ddim_step


def _prompts(pipe, item) -> tuple[torch.Tensor, torch.Tensor]:
    """(c of [source, target], ∅ of both)."""
    return pipe.encode_prompts([item.source_prompt, item.target_prompt]), pipe.encode_prompts(["", ""])


@torch.no_grad()
def negative_prompt_reference(pipe, method, image, item, label: str) -> torch.Tensor:
    pipe.scheduler.set_timesteps(method.num_steps)
    cond, _ = _prompts(pipe, item)
    x_T = ddim_inversion_reference(pipe, pipe.encode_image(image), cond[:1], None, 1.0, ef_shape=False)
    pipe.scheduler.set_timesteps(method.num_steps)
    controller = method.p2p_controller(pipe, item, method.num_steps)
    source_as_null = [cond[:1].expand(2, -1, -1)] * method.num_steps
    return text2image_reference(pipe, x_T.expand(2, -1, -1, -1), cond, None, method.guidance_scale, controller,
                                low_resource=False, per_step_uncond=source_as_null)


@torch.no_grad()
def direct_inversion_reference(pipe, method, image, item, label: str) -> torch.Tensor:
    scheduler, w = pipe.scheduler, method.guidance_scale
    scheduler.set_timesteps(method.num_steps)
    cond, uncond = _prompts(pipe, item)
    path = [pipe.encode_image(image)]
    for t in scheduler.timesteps.flip(0):
        path.append(ddim_inversion_step(scheduler, pipe.unet_eps(path[-1], t, cond[:1]), int(t), path[-1]))
    latent, offsets = path[-1].expand(2, -1, -1, -1), []
    for i, t in enumerate(scheduler.timesteps):  # offset_calculate
        rec = ddim_step(scheduler, batched_cfg(pipe, latent, t, cond, uncond, w), int(t), latent)
        offsets.append(path[-i - 2] - rec)
        latent = rec + offsets[-1]

    controller = method.p2p_controller(pipe, item, method.num_steps)
    latents = path[-1].expand(2, -1, -1, -1)
    with attention_control(pipe, ReferenceAttention(controller, 2)):
        for i, t in enumerate(scheduler.timesteps):
            latents = ddim_step(scheduler, batched_cfg(pipe, latents, t, cond, uncond, w), int(t), latents)
            latents = controller.step_callback(torch.cat([latents[:1] + offsets[i][:1], latents[1:]]))
    return latents
