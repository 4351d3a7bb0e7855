"""SDEdit (Meng et al., ICLR 2022) for latent diffusion = DDIM img2img.

As diffusers' StableDiffusionImg2ImgPipeline: with N inference steps and strength s, the start
index is N − int(N·s); the VAE latent x_0 — a sample of the encoder posterior N(μ, σ²) drawn with the
job's generator, as ``retrieve_latents(sample_mode="sample")`` does (``encode_sample=False``: the mean μ) —
is noised to the first remaining timestep t_s with ``scheduler.add_noise``
(x_{t_s} = √ᾱ_{t_s} x_0 + √(1−ᾱ_{t_s}) ε), then the remaining int(N·s) steps are denoised with the
*target* prompt and classifier-free guidance w. Defaults = diffusers' img2img defaults (strength 0.8,
50 steps, w 7.5, η 0). Cost: 2·int(N·s) UNet evaluations (1× when w=1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import Inversion, ItemBatchedMethod, check_range, split_inversions, stack_tensors
from methods.steps import cfg_passes, ddim_step, guided_noise, per_item_noise


@dataclass
class SDEdit(ItemBatchedMethod):
    name = "sdedit"
    version = "2"  # 2: the VAE latent is a posterior sample (was the mean)
    inversion_fields = ("encode_sample",)
    stochastic = True

    strength: float = 0.8  # fraction of the schedule that is re-noised (diffusers img2img default)
    num_steps: int = 50
    guidance_scale: float = 7.5
    eta: float = 0.0  # DDIM η of the denoising steps
    encode_sample: bool = True  # x_0 ~ N(μ, σ²) of the VAE posterior (diffusers img2img); False: x_0 = μ

    def __post_init__(self) -> None:
        check_range(self, "strength", 0.0, 1.0, low_open=True)
        check_range(self, "num_steps", 1, 10_000)
        check_range(self, "guidance_scale", 0.0, 100.0)
        check_range(self, "eta", 0.0, 1.0)

    @torch.no_grad()
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        """SDEdit's trivial inversion: the VAE latent of each source image (posterior sample or mean)."""
        if not self.encode_sample:
            return split_inversions({"x0": pipe.encode_image(images)}, {}, len(images))
        posterior = pipe.vae.encode(images.to(device=pipe.device, dtype=pipe.vae.dtype)).latent_dist
        noise = per_item_noise(posterior.mean, generators)
        sample = posterior.mean + posterior.std * noise  # μ + σ·ε
        return split_inversions({"x0": (sample * pipe.vae.config.scaling_factor).to(pipe.dtype)}, {}, len(images))

    @torch.no_grad()
    def edit_batch(self, pipe, inversions, items, generators) -> torch.Tensor:
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        num_denoise = min(int(self.num_steps * self.strength), self.num_steps)
        timesteps = scheduler.timesteps[self.num_steps - num_denoise:]
        x0 = stack_tensors(inversions, "x0")
        if num_denoise == 0:  # strength too small to reach one step: nothing is re-noised
            return pipe.decode_latents(x0)

        cond = pipe.encode_prompts([item.target_prompt for item in items])
        uncond = pipe.encode_prompts([""] * len(items))
        latents = scheduler.add_noise(x0, per_item_noise(x0, generators), timesteps[:1])
        for t in timesteps:
            eps = guided_noise(pipe, latents, t, cond, uncond, self.guidance_scale)
            noise = per_item_noise(latents, generators) if self.eta > 0 else None
            latents = ddim_step(scheduler, eps, int(t), latents, self.eta, noise)
        return pipe.decode_latents(latents)

    def declared_nfe(self, item) -> tuple[int, int]:
        return 0, cfg_passes(self.guidance_scale) * min(int(self.num_steps * self.strength), self.num_steps)
