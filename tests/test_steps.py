"""Shared step math against formulas written here from docs/methods.md#ddim--p2p--ddpm-noise-space-methods, in float64.

The reference side of every check uses only ``scheduler.alphas_cumprod`` (diffusers' table) and those
formulas; nothing from ``methods/`` is used to compute expected values.
"""

from __future__ import annotations

import pytest
import torch
from conftest import SCHEDULER_OFFSET0, SCHEDULER_OFFSET1
from diffusers import DDIMScheduler

from methods import steps


def spec_alpha_bar(scheduler, t: int) -> torch.Tensor:
    """ᾱ_t, with ᾱ_t := alphas_cumprod[0] for t < 0 (set_alpha_to_one=False), in float64."""
    return scheduler.alphas_cumprod.double()[max(t, 0)]


def spec_sigma2(scheduler, t: int, stride: int) -> torch.Tensor:
    """σ_t² = (1−ᾱ_{t−Δ})/(1−ᾱ_t) · (1 − ᾱ_t/ᾱ_{t−Δ})   (EF `get_variance`)."""
    a_t, a_prev = spec_alpha_bar(scheduler, t), spec_alpha_bar(scheduler, t - stride)
    return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


@pytest.fixture(params=[SCHEDULER_OFFSET1, SCHEDULER_OFFSET0], ids=["offset1", "offset0"])
def scheduler(request):
    scheduler = DDIMScheduler(**request.param)
    scheduler.set_timesteps(20)
    return scheduler


@pytest.fixture
def tensors():
    g = torch.Generator().manual_seed(3)
    return [torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64) for _ in range(3)]


def test_ddim_step(scheduler, tensors):
    x_t, eps, _ = tensors
    for t in (int(scheduler.timesteps[0]), int(scheduler.timesteps[-1])):  # first step and the t−Δ < 0 step
        a_t, a_prev = spec_alpha_bar(scheduler, t), spec_alpha_bar(scheduler, t - 50)
        x0 = (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        expected = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        assert torch.allclose(steps.ddim_step(scheduler, eps, t, x_t), expected, atol=1e-6, rtol=0)
        # and diffusers' own DDIM step agrees (η = 0)
        ours = steps.ddim_step(scheduler, eps.float(), t, x_t.float())
        theirs = scheduler.step(eps.float(), t, x_t.float(), eta=0.0).prev_sample
        assert (ours - theirs).abs().max() <= 1e-5


def test_ddim_inversion_step(scheduler, tensors):
    x_prev, eps, _ = tensors
    t = int(scheduler.timesteps[-1])  # x_{t−Δ} with t−Δ < 0 → ᾱ_0
    a_t, a_prev = spec_alpha_bar(scheduler, t), spec_alpha_bar(scheduler, t - 50)
    expected = a_t.sqrt() * (x_prev - (1 - a_prev).sqrt() * eps) / a_prev.sqrt() + (1 - a_t).sqrt() * eps
    assert torch.allclose(steps.ddim_inversion_step(scheduler, eps, t, x_prev), expected, atol=1e-6, rtol=0)
    # an inversion step followed by a denoising step with the same ε̂ is the identity
    back = steps.ddim_step(scheduler, eps, t, steps.ddim_inversion_step(scheduler, eps, t, x_prev))
    assert torch.allclose(back, x_prev, atol=1e-10, rtol=0)


@pytest.mark.parametrize("eta", [1.0, 0.5])
def test_ef_step_and_noise_extraction(scheduler, tensors, eta):
    x_t, eps, z = tensors
    t = int(scheduler.timesteps[5])
    a_t, a_prev = spec_alpha_bar(scheduler, t), spec_alpha_bar(scheduler, t - 50)
    var = spec_sigma2(scheduler, t, 50)
    mu = a_prev.sqrt() * (x_t - (1 - a_t).sqrt() * eps) / a_t.sqrt() + (1 - a_prev - eta * var).sqrt() * eps
    expected = mu + eta * var.sqrt() * z
    assert torch.allclose(steps.ef_step(scheduler, x_t, eps, t, eta, z), expected, atol=1e-6, rtol=0)
    assert torch.allclose(steps.ddpm_posterior_variance(scheduler, t).double(), var, atol=1e-7, rtol=0)  # fp32 table
    extracted = steps.ef_extract_noise(scheduler, expected, x_t, eps, t, eta)
    assert torch.allclose(extracted, z, atol=1e-6, rtol=0)


def test_forward_noising(scheduler, tensors):
    x0, noise, _ = tensors
    ascending = [int(t) for t in scheduler.timesteps.flip(0)]
    a1, a2 = spec_alpha_bar(scheduler, ascending[0]), spec_alpha_bar(scheduler, ascending[1])
    # independent (EF): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε
    assert torch.allclose(steps.q_sample(scheduler, x0, ascending[1], noise),
                          a2.sqrt() * x0 + (1 - a2).sqrt() * noise, atol=1e-6, rtol=0)
    # sequential (naive): x̃_1 from x_0 with ᾱ_{t_0} := 1, then x̃_2 from x̃_1 with the ratio ᾱ_{t_2}/ᾱ_{t_1}
    first = steps.q_transition(scheduler, x0, None, ascending[0], noise)
    assert torch.allclose(first, a1.sqrt() * x0 + (1 - a1).sqrt() * noise, atol=1e-6, rtol=0)
    second = steps.q_transition(scheduler, first, ascending[0], ascending[1], noise)
    assert torch.allclose(second, (a2 / a1).sqrt() * first + (1 - a2 / a1).sqrt() * noise, atol=1e-6, rtol=0)


def test_sequential_chain_has_the_marginal_variance(scheduler):
    """Composing q_transition over the grid gives Var(x̃_n | x_0) = 1 − ᾱ_{t_n} (the forward Markov chain)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.zeros(20000, dtype=torch.float64)
    x, t_prev = x0, None
    for t in [int(t) for t in scheduler.timesteps.flip(0)][:6]:
        x = steps.q_transition(scheduler, x, t_prev, t, torch.randn(x0.shape, generator=g, dtype=torch.float64))
        t_prev = t
    assert abs(x.var().item() - (1 - spec_alpha_bar(scheduler, t_prev)).item()) < 0.03
