"""Diffusion step math shared by every method (one implementation, indexed as the references do).

Notation (ε-prediction, DDIM/DDPM papers): ᾱ_t = alphas_cumprod[t]; with N inference steps the
grid stride is Δ = num_train_timesteps // N and the previous timestep is t − Δ. When t − Δ < 0 the
references use ᾱ_prev = scheduler.final_alpha_cumprod (= alphas_cumprod[0] for SD, whose scheduler
has set_alpha_to_one=False).

The scheduler object is a diffusers ``DDIMScheduler`` built from an explicit config (see
``bench.models.build_scheduler``); its betas are never re-derived by hand here.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch


def step_stride(scheduler) -> int:
    """Δ = num_train_timesteps // num_inference_steps (the grid stride)."""
    return scheduler.config.num_train_timesteps // scheduler.num_inference_steps


def alpha_bar(scheduler, t: int | torch.Tensor) -> torch.Tensor:
    """ᾱ_t, with ᾱ_t := final_alpha_cumprod for t < 0 (the references' convention)."""
    t = int(t)
    if t < 0:
        return scheduler.final_alpha_cumprod
    return scheduler.alphas_cumprod[t]


def _as(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return value.to(device=like.device, dtype=like.dtype)


def predict_x0(x_t: torch.Tensor, eps: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
    """x̂_0 = (x_t − √(1−ᾱ_t) ε̂) / √ᾱ_t."""
    a_t = _as(a_t, x_t)
    return (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()


def ddpm_posterior_variance(scheduler, t: int) -> torch.Tensor:
    """σ_t² = (1−ᾱ_{t−Δ}) / (1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−Δ})  (DDIM eq. 16 with η=1; EF `get_variance`)."""
    a_t = alpha_bar(scheduler, t)
    a_prev = alpha_bar(scheduler, int(t) - step_stride(scheduler))
    return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


def ddim_step(
    scheduler,
    eps: torch.Tensor,
    t: int,
    x_t: torch.Tensor,
    eta: float = 0.0,
    variance_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One DDIM denoising step x_t → x_{t−Δ} (Song et al. eq. 12; = diffusers DDIMScheduler.step).

    x_{t−Δ} = √ᾱ_{t−Δ} x̂_0 + √(1 − ᾱ_{t−Δ} − σ²) ε̂ + σ z,   σ = η σ_t,  z = variance_noise.
    """
    a_t = alpha_bar(scheduler, t)
    a_prev = _as(alpha_bar(scheduler, int(t) - step_stride(scheduler)), x_t)
    x0 = predict_x0(x_t, eps, a_t)
    sigma = _as(eta * ddpm_posterior_variance(scheduler, t).sqrt(), x_t)
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).sqrt() * eps
    if eta > 0:
        if variance_noise is None:
            raise ValueError("ddim_step with eta > 0 needs variance_noise")
        x_prev = x_prev + sigma * variance_noise
    return x_prev


def ddim_inversion_step(scheduler, eps: torch.Tensor, t: int, x_prev: torch.Tensor) -> torch.Tensor:
    """One DDIM inversion step x_{t−Δ} → x_t, with ε̂ = ε_θ(x_{t−Δ}, t) (the *higher* label).

    x_t = √ᾱ_t (x_{t−Δ} − √(1−ᾱ_{t−Δ}) ε̂) / √ᾱ_{t−Δ} + √(1−ᾱ_t) ε̂   (P2P/NTI `next_step`).
    """
    a_t = _as(alpha_bar(scheduler, t), x_prev)
    a_prev = alpha_bar(scheduler, int(t) - step_stride(scheduler))
    x0 = predict_x0(x_prev, eps, a_prev)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps


def ef_mean(scheduler, x_t: torch.Tensor, eps: torch.Tensor, t: int, eta: float) -> torch.Tensor:
    """μ_t(x_t) of the edit-friendly DDPM paper: √ᾱ_{t−Δ} x̂_0 + √(1 − ᾱ_{t−Δ} − η σ_t²) ε̂.

    Note η enters as η·σ² under the root (reference `inversion_utils.py`), matching the DDPM
    posterior only for η ∈ {0, 1}.
    """
    a_t = alpha_bar(scheduler, t)
    a_prev = _as(alpha_bar(scheduler, int(t) - step_stride(scheduler)), x_t)
    x0 = predict_x0(x_t, eps, a_t)
    var = _as(ddpm_posterior_variance(scheduler, t), x_t)
    return a_prev.sqrt() * x0 + (1 - a_prev - eta * var).sqrt() * eps


def ef_noise_std(scheduler, t: int, eta: float) -> torch.Tensor:
    """The EF reverse step's noise scale η·σ_t."""
    return eta * ddpm_posterior_variance(scheduler, t).sqrt()


def classifier_free_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, scale) -> torch.Tensor:
    """ε̂ = ε_θ(x, t, ∅) + w (ε_θ(x, t, c) − ε_θ(x, t, ∅)). ``scale`` may be a per-sample tensor."""
    if isinstance(scale, torch.Tensor):
        scale = scale.to(eps_cond).view(-1, *([1] * (eps_cond.dim() - 1)))
    return eps_uncond + scale * (eps_cond - eps_uncond)


def cfg_passes(scale) -> int:
    """UNet passes per branch that ``guided_noise`` makes: 1 for a scalar scale of 1, else 2."""
    return 1 if not isinstance(scale, torch.Tensor) and scale == 1 else 2


def guided_noise(pipe, latents: torch.Tensor, t, cond: torch.Tensor, uncond: torch.Tensor, scale) -> torch.Tensor:
    """CFG noise prediction with the unconditional and conditional passes in one UNet batch.

    ``latents`` (B,...), ``cond``/``uncond`` (B,77,D) embeddings. With a scalar scale of 1 only the
    conditional pass runs (as diffusers' pipelines do for guidance_scale <= 1).
    """
    if cfg_passes(scale) == 1:
        return pipe.unet_eps(latents, t, cond)
    eps = pipe.unet_eps(torch.cat([latents, latents]), t, torch.cat([uncond, cond]))
    eps_uncond, eps_cond = eps.chunk(2)
    return classifier_free_guidance(eps_uncond, eps_cond, scale)


def gaussian_like(latents: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """N(0, I) noise drawn on the CPU generator (device-independent streams, as diffusers advises)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)


def per_item_noise(latents: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """N(0, I) like ``latents`` (B, …), row b drawn from ``generators[b]``: each item's stream is the one it
    draws when it runs alone, whatever B is."""
    return torch.cat([gaussian_like(latents[b:b + 1], generator) for b, generator in enumerate(generators)])


# ----------------------------------------------------------------------------------------------
# DDPM noise space (edit-friendly DDPM, naive DDPM): forward noising, z extraction, reverse step


def ef_step(scheduler, x_t: torch.Tensor, eps: torch.Tensor, t: int, eta: float, z: torch.Tensor) -> torch.Tensor:
    """EF reverse step x_{t−Δ} = μ_t(x_t; ε̂) + η σ_t z  (EF `reverse_step`, `inversion_utils.py` L181-210)."""
    return ef_mean(scheduler, x_t, eps, t, eta) + _as(ef_noise_std(scheduler, t, eta), x_t) * z


def ef_extract_noise(scheduler, x_prev: torch.Tensor, x_t: torch.Tensor, eps: torch.Tensor, t: int,
                     eta: float) -> torch.Tensor:
    """z_t = (x_{t−Δ} − μ_t(x_t; ε̂)) / (η σ_t): the noise that makes ``ef_step`` land exactly on x_{t−Δ}
    (EF `inversion_forward_process`, `inversion_utils.py` L157-168)."""
    return (x_prev - ef_mean(scheduler, x_t, eps, t, eta)) / _as(ef_noise_std(scheduler, t, eta), x_t)


def q_sample(scheduler, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε  (marginal q(x_t|x_0); EF `sample_xts_from_x0`)."""
    a_t = _as(alpha_bar(scheduler, t), x0)
    return a_t.sqrt() * x0 + (1 - a_t).sqrt() * noise


def q_transition(scheduler, x_prev: torch.Tensor, t_prev: int | None, t: int, noise: torch.Tensor) -> torch.Tensor:
    """x_t = √(ᾱ_t/ᾱ_{t'}) x_{t'} + √(1 − ᾱ_t/ᾱ_{t'}) ε: one step of the strided forward Markov chain
    from t' = ``t_prev`` to t (``t_prev=None`` means x_0, ᾱ := 1). (docs/methods.md#presets)."""
    a_t = _as(alpha_bar(scheduler, t), x_prev)
    a_prev = torch.ones_like(a_t) if t_prev is None else _as(alpha_bar(scheduler, t_prev), x_prev)
    ratio = a_t / a_prev
    return ratio.sqrt() * x_prev + (1 - ratio).sqrt() * noise


# ----------------------------------------------------------------------------------------------
# loops shared by the DDIM-based methods


def ddim_inversion_loop(pipe, x0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, scale,
                        on_step=None) -> list[torch.Tensor]:
    """DDIM inversion over ``pipe.scheduler.timesteps`` ascending: [x_0, x_{t_1}, …, x_{t_N}].

    Each step evaluates ε̂ = CFG(ε_θ(x_{t−Δ}, t, ·), w=scale) at the *higher* label t (P2P/NTI
    `ddim_loop`; EF `ddim_inversion.py` L27-39 with w = inversion_guidance_scale). ``on_step(latents) -> latents`` is
    called after every step (e.g. ``AttentionStore.step_callback``).
    """
    scheduler = pipe.scheduler
    latents = [x0]
    for t in scheduler.timesteps.flip(0):
        eps = guided_noise(pipe, latents[-1], t, cond, uncond, scale)
        x_t = ddim_inversion_step(scheduler, eps, int(t), latents[-1])
        latents.append(on_step(x_t) if on_step is not None else x_t)
    return latents


def ddim_sampling_loop(pipe, x_T: torch.Tensor, cond: torch.Tensor, uncond, scale,
                       on_step=None) -> torch.Tensor:
    """Deterministic DDIM (η=0) from x_T over ``pipe.scheduler.timesteps``; all branches in one UNet batch.

    ``x_T`` (B,…), ``cond`` (B,77,D), ``uncond`` (B,77,D) or a sequence of N such tensors, one per step
    (Null-text inversion's optimised ∅_t), ``scale`` a float or per-branch tensor (B,).
    ``on_step(latents) -> latents`` runs after each step (P2P's ``step_callback``: LocalBlend).
    """
    scheduler = pipe.scheduler
    per_step = not isinstance(uncond, torch.Tensor)
    if per_step and len(uncond) != len(scheduler.timesteps):
        raise ValueError(f"ddim_sampling_loop: {len(uncond)} per-step unconditional embeddings for "
                         f"{len(scheduler.timesteps)} steps")
    latents = x_T
    for i, t in enumerate(scheduler.timesteps):
        eps = guided_noise(pipe, latents, t, cond, uncond[i] if per_step else uncond, scale)
        latents = ddim_step(scheduler, eps, int(t), latents)
        if on_step is not None:
            latents = on_step(latents)
    return latents


# ----------------------------------------------------------------------------------------------
# reference precision


def reference_autocast(pipe):
    """fp16 autocast on CUDA when ``runtime.dtype=reference`` (``pipe.reference_precision``), for the steps the
    references ran under ``torch.autocast("cuda")``: EF-DDPM's VAE encode/decode (inbarhub/DDPM_inversion@58fc881
    main_run.py:72-73) and StyleDiffusion's fp16 CLIP image encoder (docs/methods.md#presets). Otherwise a no-op."""
    if getattr(pipe, "reference_precision", False) and torch.device(pipe.device).type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()
