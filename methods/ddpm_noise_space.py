"""The DDPM-noise-space loop shared by ef_ddpm, ef_ddpm_p2p and ddpm_naive (docs/methods.md#presets).

Inversion (grid t_1 < … < t_T of ``pipe.scheduler`` with T = num_steps):
  1. noise x_0 onto the grid: x̃_1..x̃_T — *how* is the subclass's choice (``noise_trajectory``):
     independently per step (EF) or along the forward Markov chain (naive);
  2. for n = T…1: ε̂_n = CFG(ε_θ(x̃_n, t_n, ·), w = inversion_guidance_scale) with the source prompt, and
     z_n = (x̃_{n−1} − μ_n(x̃_n; ε̂_n)) / (η σ_n)  (``steps.ef_extract_noise``).
  3. write back x̃_{n−1} ← μ_n + η σ_n z_n before step n−1 (reference L171-173; not a no-op in floating
     point: ε̂_{n−1} is then evaluated at exactly the latent the reverse process produces, which makes
     the fp32 reconstruction bitwise exact rather than drifting by the UNet's error amplification).
  The inversion stores x̃_0..x̃_T (written back) and z_1..z_T, *including* z_1: the reference zeroes z_1
  (`inversion_utils.py` L175-176); here that happens at edit time unless ``keep_z1``, so both
  behaviours share one cached inversion.

Editing: start from x̃_{T−T_skip} (the noised latent, not a re-inverted one: `main_run.py` L96) and for
n = T−T_skip…1 take x_{n−1} = μ_n(x_n; ε̂) + η σ_n z_n with ε̂ = CFG(target prompt, w = guidance_scale); all
branches (and both CFG passes) in one UNet batch. With target = source, guidance_scale = inversion_guidance_scale,
T_skip = 0 and keep_z1 this returns x_0 up to rounding; with z_1 = 0 the result is x_0 − η σ_1 z_1,
i.e. the last step's noise is missing (inbarhub/DDPM_inversion#13).

Cost: 2T inversion NFE (T if inversion_guidance_scale = 1), 2·(T−T_skip)·branches editing NFE.
"""

from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from methods.base import HyperparameterError, Inversion, ItemBatchedMethod, check_range, target_rows
from methods.p2p import AttentionController, attention_control, batch_controller
from methods.steps import cfg_passes, ef_extract_noise, ef_step, guided_noise, reference_autocast


@dataclass
class DDPMNoiseSpaceMethod(ItemBatchedMethod):
    """Base for methods that edit in DDPM noise space; subclasses choose the noising (and a controller)."""

    inversion_fields = ("num_steps", "eta", "inversion_guidance_scale")
    stochastic = True

    num_steps: int = 100  # T (EF `--num_diffusion_steps`)
    eta: float = 1.0  # η (EF `--eta`)
    inversion_guidance_scale: float = 3.5  # w of ε̂ during inversion (EF `--cfg_src`)
    guidance_scale: float = 15.0  # w of the edit (EF `--cfg_tar`)
    skip: int = 36  # T_skip (EF `--skip`)
    keep_z1: bool = False  # False = the reference: z_1 := 0

    def __post_init__(self) -> None:
        check_range(self, "num_steps", 1, 1000)
        check_range(self, "eta", 0.0, 1.0, low_open=True)  # z = (·)/(ησ) needs η > 0
        check_range(self, "inversion_guidance_scale", 0.0, 100.0)
        check_range(self, "guidance_scale", 0.0, 100.0)
        check_range(self, "skip", 0, self.num_steps)
        if self.skip == self.num_steps:
            raise HyperparameterError(f"{type(self).__name__}.skip={self.skip} leaves no denoising step: "
                                      f"expected skip < num_steps={self.num_steps}")

    # choices of the subclasses ---------------------------------------------------------------
    def noise_trajectory(self, scheduler, x0: torch.Tensor, generator: torch.Generator) -> list[torch.Tensor]:
        """[x̃_0 = x_0, x̃_1, …, x̃_T] on the ascending grid ``scheduler.timesteps.flip(0)``."""
        raise NotImplementedError

    def branches(self, item) -> tuple[list[str], list[float]]:
        """Prompts and guidance scales of the edit batch (EF `our_inv`: the target alone)."""
        return [item.target_prompt], [self.guidance_scale]

    def controller(self, pipe, item) -> AttentionController | None:
        return None

    def reconstruction(self) -> DDPMNoiseSpaceMethod:
        """This method set to regenerate its own inversion (no skip, z_1 kept, edit guidance = inversion
        guidance): with target = source prompt it returns x_0 up to rounding (the noise-space analyses)."""
        return dataclasses.replace(self, skip=0, keep_z1=True, guidance_scale=self.inversion_guidance_scale)

    # the shared loop ---------------------------------------------------------------------------
    @torch.no_grad()
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        with reference_autocast(pipe):  # EF encodes under autocast("cuda")
            x0 = pipe.encode_image(images)
        # each item is noised from its own generator (independent of B), then stacked per grid step
        per_item = [self.noise_trajectory(scheduler, x0[b:b + 1], generator) for b, generator in enumerate(generators)]
        xts = [torch.cat(step) for step in zip(*per_item)]
        cond, uncond = pipe.encode_prompts(source_prompts), pipe.encode_prompts([""] * len(source_prompts))
        ascending = scheduler.timesteps.flip(0)
        zs = [torch.empty(0)] * self.num_steps
        for n in range(self.num_steps, 0, -1):  # n = T … 1, as the reference
            t = ascending[n - 1]
            eps = guided_noise(pipe, xts[n], t, cond, uncond, self.inversion_guidance_scale)
            zs[n - 1] = ef_extract_noise(scheduler, xts[n - 1], xts[n], eps, int(t), self.eta)
            # the reference's write-back xts[n−1] ← μ_n + ησ_n z_n (L171-173): equal in exact arithmetic,
            # but in floating point it makes the next ε̂ be evaluated at the very latent the reverse
            # process will produce, so reconstruction is exact to the last bit
            xts[n - 1] = ef_step(scheduler, xts[n], eps, int(t), self.eta, zs[n - 1])
        meta = {"timesteps": [int(t) for t in ascending]}
        return [Inversion({"xts": torch.cat([x[b:b + 1] for x in xts]), "zs": torch.cat([z[b:b + 1] for z in zs])},
                          dict(meta)) for b in range(len(source_prompts))]

    @torch.no_grad()
    def edit_latents_batch(self, pipe, inversions: list[Inversion], items, z_hook=None) -> torch.Tensor:
        """The edited latents of every item, one row per branch, item-major. ``z_hook(n, t, x_t, ε̂, z_n) -> z_n``
        may replace the noise maps of step n (EF-DDPM's colour manipulation; bench.analyses)."""
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        branches = [self.branches(item) for item in items]
        rows = len(branches[0][0])
        prompts = [prompt for item_prompts, _ in branches for prompt in item_prompts]
        scales = [scale for _, item_scales in branches for scale in item_scales]
        cond, uncond = pipe.encode_prompts(prompts), pipe.encode_prompts([""] * len(prompts))
        scale = scales[0] if rows == 1 else torch.tensor(scales)
        first = self.num_steps - self.skip
        zs = torch.stack([inversion.tensors["zs"][:first] for inversion in inversions], dim=1)  # (first, B, …)
        if not self.keep_z1:
            zs[0] = 0  # the reference's z_1 = 0
        zs = zs.repeat_interleave(rows, dim=1)  # every branch of an item takes the item's z_n
        latents = torch.cat([inversion.tensors["xts"][first:first + 1] for inversion in inversions])
        latents = latents.repeat_interleave(rows, dim=0)  # x̃_{T−T_skip} for every branch
        ascending = scheduler.timesteps.flip(0)
        controllers = [self.controller(pipe, item) for item in items]
        controller = None if controllers[0] is None else batch_controller(controllers)
        with attention_control(pipe, controller) if controller is not None else nullcontext():
            for n in range(first, 0, -1):
                t = ascending[n - 1]
                eps = guided_noise(pipe, latents, t, cond, uncond, scale)
                z = zs[n - 1] if z_hook is None else z_hook(n, int(t), latents, eps, zs[n - 1])
                latents = ef_step(scheduler, latents, eps, int(t), self.eta, z)
                if controller is not None:
                    latents = controller.step_callback(latents)
        return latents

    def edit_latents(self, pipe, inversion: Inversion, item, z_hook=None) -> torch.Tensor:
        """One item's edited latents, one row per branch (``z_hook`` as in ``edit_latents_batch``)."""
        return self.edit_latents_batch(pipe, [inversion], [item], z_hook)

    def edit_batch(self, pipe, inversions, items, generators) -> torch.Tensor:
        latents = target_rows(self.edit_latents_batch(pipe, inversions, items), len(items))
        with reference_autocast(pipe):  # EF decodes under autocast("cuda")
            return pipe.decode_latents(latents)

    def declared_nfe(self, item) -> tuple[int, int]:
        prompts, scales = self.branches(item)
        edit_passes = cfg_passes(scales[0]) if len(scales) == 1 else 2
        return (cfg_passes(self.inversion_guidance_scale) * self.num_steps,
                edit_passes * len(prompts) * (self.num_steps - self.skip))
