"""DDIM / DDIM+P2P / naive DDPM / EF-DDPM (+P2P) on the tiny random pipeline (CPU, fp32, few steps).

Expected values of the "one reference step" checks are computed here from the formulas of docs/methods.md with
the UNet called directly (no ``methods`` code on the reference side).
"""

from __future__ import annotations

import pytest
import torch

from bench.data.item import EditItem
from methods.base import HyperparameterError, Inversion
from methods.ddim import DDIM
from methods.ddim_p2p import DDIMP2P
from methods.ddpm_naive import NaiveDDPM
from methods.ef_ddpm import EFDDPM
from methods.ef_ddpm_p2p import EFDDPMP2P

SOURCE = "a photo of a cat"
TARGET = "a photo of a dog"


def item(target: str = SOURCE) -> EditItem:
    return EditItem("img/0", "img", "unused.png", SOURCE, target, blend_words=("cat", "dog"))


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


# ---- reference formulas (docs/methods.md), written independently of methods/ ----------------


def ab(scheduler, t: int) -> torch.Tensor:
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def ref_eps(pipe, x, t, prompt: str, w: float) -> torch.Tensor:
    """ε_θ(x,t,∅) + w(ε_θ(x,t,c) − ε_θ(x,t,∅)), one batch [∅, c] (w=1: the conditional pass alone)."""
    hidden = pipe.text_encoder(pipe.tokenizer([prompt, ""], padding="max_length", max_length=77,
                                              return_tensors="pt").input_ids)[0]
    if w == 1:
        return pipe.unet(x, t, encoder_hidden_states=hidden[:1]).sample
    out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([hidden[1:], hidden[:1]])).sample
    return out[:1] + w * (out[1:] - out[:1])


def ref_mu_sigma(scheduler, x, eps, t: int, stride: int, eta: float):
    a_t, a_prev = ab(scheduler, t), ab(scheduler, t - stride)
    var = (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    return a_prev.sqrt() * x0 + (1 - a_prev - eta * var).sqrt() * eps, eta * var.sqrt()


# ---- 1. EF-DDPM reconstruction -------------------------------------------------------------------


@torch.no_grad()
def test_ef_reconstruction_is_exact_with_z1_and_misses_one_step_without(tiny_pipe, source_image):
    x0 = tiny_pipe.encode_image(source_image)
    method = EFDDPM(num_steps=6, inversion_guidance_scale=3.5, guidance_scale=3.5, skip=0, keep_z1=True)
    inversion = method.invert(tiny_pipe, source_image, SOURCE, seeded())
    exact = method.edit_latents(tiny_pipe, inversion, item())
    assert (exact - x0).abs().max() <= 1e-5

    # reference z_1 = 0: x̂_0 = μ_1(x_1) = x_0 − η σ_1 z_1 — the one-step residual, computed from the formula
    reference = EFDDPM(num_steps=6, inversion_guidance_scale=3.5, guidance_scale=3.5, skip=0, keep_z1=False)
    x0_hat = reference.edit_latents(tiny_pipe, inversion, item())
    scheduler = tiny_pipe.scheduler
    t1 = int(scheduler.timesteps[-1])
    _, sigma_1 = ref_mu_sigma(scheduler, x0, x0, t1, 1000 // 6, 1.0)
    residual = -sigma_1 * inversion.tensors["zs"][0]
    assert (x0_hat - x0 - residual).abs().max() <= 1e-6
    assert residual.abs().max() > 1e-3  # the check above is not vacuous


# ---- 2. naive DDPM reconstructs; EF noise maps have the larger variance ------------------------------


@torch.no_grad()
def test_naive_reconstructs_and_ef_noise_has_higher_variance(tiny_pipe, source_image):
    x0 = tiny_pipe.encode_image(source_image)
    hparams = dict(num_steps=8, inversion_guidance_scale=3.5, guidance_scale=3.5, skip=0, keep_z1=True)
    naive, ef = NaiveDDPM(**hparams), EFDDPM(**hparams)
    naive_inv = naive.invert(tiny_pipe, source_image, SOURCE, seeded())
    assert (naive.edit_latents(tiny_pipe, naive_inv, item()) - x0).abs().max() <= 1e-5

    ef_inv = ef.invert(tiny_pipe, source_image, SOURCE, seeded())
    # per-pixel variance of z_n, n = 2..T (z_1 is identical in both: x̃_0 = x_0 and the t_1 step)
    naive_var = naive_inv.tensors["zs"][1:].flatten(1).var(dim=1)
    ef_var = ef_inv.tensors["zs"][1:].flatten(1).var(dim=1)
    # EF's x̃_{n−1} is independent of x̃_n, so z_n also carries the mismatch of two independent noises;
    # along the Markov chain x̃_{n−1} − μ_n is the posterior noise plus the denoiser's error only.
    # (With random weights the denoiser error inflates both above 1, most at n = 2 where σ_2 is small.)
    ratio = ef_var / naive_var
    assert ratio.median() > 1.5
    assert (ratio > 1).all()


# ---- 3. DDIM inversion + sampling at w = 1 ---------------------------------------------------------------


@torch.no_grad()
def test_ddim_reconstruction_error_shrinks_with_steps(tiny_pipe, source_image):
    x0 = tiny_pipe.encode_image(source_image)

    def rms_error(steps: int) -> float:
        method = DDIM(num_steps=steps, inversion_guidance_scale=1.0, guidance_scale=1.0)
        out = method.edit_latents(tiny_pipe, method.invert(tiny_pipe, source_image, SOURCE, seeded()), item())
        return (out - x0).pow(2).mean().sqrt().item()

    # DDIM inversion evaluates ε̂(x_{t−Δ}, t) where sampling uses ε̂(x_t, t): an O(Δ) error. The random
    # UNet's ε̂ is rough in x, so the error is large and shrinks only from ~10 steps on (measured RMS:
    # 1.30 at 10, 0.89 at 40, 0.55 at 160 steps; 1.0–1.1 for 4–16 steps, not monotone there).
    coarse, fine = rms_error(10), rms_error(40)
    assert coarse <= 1.5 and fine <= 1.05
    assert fine < 0.8 * coarse


@torch.no_grad()
def test_ddim_reconstruction_is_exact_when_eps_does_not_depend_on_x(tiny_pipe, source_image):
    """With conv_in zeroed, ε̂ depends on (t, text) only, so ε̂(x_{t−Δ}, t) = ε̂(x_t, t): exact inversion."""
    torch.nn.init.zeros_(tiny_pipe.unet.conv_in.weight)
    x0 = tiny_pipe.encode_image(source_image)
    method = DDIM(num_steps=5, inversion_guidance_scale=1.0, guidance_scale=1.0)
    out = method.edit_latents(tiny_pipe, method.invert(tiny_pipe, source_image, SOURCE, seeded()), item())
    assert (out - x0).abs().max() <= 1e-5


# ---- 4. one reference step per method ------------------------------------------------------------


def ref_guided_batch(pipe, x, t, prompts: list[str], scales: list[float]) -> torch.Tensor:
    """CFG for several branches in one UNet batch [∅…, c…] (the layout the P2P methods use)."""
    hidden = pipe.text_encoder(pipe.tokenizer(prompts + [""] * len(prompts), padding="max_length", max_length=77,
                                              return_tensors="pt").input_ids)[0]
    k = len(prompts)
    out = pipe.unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([hidden[k:], hidden[:k]])).sample
    w = torch.tensor(scales).view(-1, 1, 1, 1)
    return out[:k] + w * (out[k:] - out[:k])


def ref_ddim(scheduler, x, eps, t: int, stride: int, invert: bool) -> torch.Tensor:
    """DDIM step t → t−Δ, or its inversion t−Δ → t (P2P next_step), from the formulas of docs/methods.md."""
    a_t, a_prev = ab(scheduler, t), ab(scheduler, t - stride)
    a_from, a_to = (a_prev, a_t) if invert else (a_t, a_prev)
    return a_to.sqrt() * (x - (1 - a_from).sqrt() * eps) / a_from.sqrt() + (1 - a_to).sqrt() * eps


@torch.no_grad()
def test_ddim_inversion_and_sampling_steps_match_reference(tiny_pipe, source_image):
    from methods.steps import ddim_inversion_loop, ddim_sampling_loop

    N, stride = 4, 250
    method = DDIM(num_steps=N, inversion_guidance_scale=1.0, guidance_scale=7.5)
    inversion = method.invert(tiny_pipe, source_image, SOURCE, seeded())
    scheduler = tiny_pipe.scheduler
    cond, uncond = tiny_pipe.encode_prompts([SOURCE, ""]).chunk(2)
    trajectory = ddim_inversion_loop(tiny_pipe, tiny_pipe.encode_image(source_image), cond, uncond, 1.0)
    assert torch.equal(trajectory[-1], inversion.tensors["x_T"])  # the method is this loop
    for k, t in enumerate(int(t) for t in scheduler.timesteps.flip(0)):  # ε̂ at the higher label t
        expected = ref_ddim(scheduler, trajectory[k], ref_eps(tiny_pipe, trajectory[k], t, SOURCE, 1.0), t, stride, True)
        assert torch.allclose(trajectory[k + 1], expected, atol=1e-6, rtol=1e-6)

    cond, uncond = tiny_pipe.encode_prompts([TARGET, ""]).chunk(2)
    visited = [inversion.tensors["x_T"]]
    final = ddim_sampling_loop(tiny_pipe, visited[0], cond, uncond, 7.5, on_step=lambda x: visited.append(x) or x)
    assert torch.equal(final, method.edit_latents(tiny_pipe, inversion, item(TARGET)))
    for k, t in enumerate(int(t) for t in scheduler.timesteps):
        expected = ref_ddim(scheduler, visited[k], ref_eps(tiny_pipe, visited[k], t, TARGET, 7.5), t, stride, False)
        assert torch.allclose(visited[k + 1], expected, atol=1e-6, rtol=1e-6)


@torch.no_grad()
def test_ddim_p2p_without_replacement_is_batched_ddim_of_both_branches(tiny_pipe, source_image):
    p2p = DDIMP2P(num_steps=3, guidance_scale=5.0, source_guidance_scale=2.0,
                  cross_replace_steps=0.0, self_replace_steps=0.0)
    inversion = p2p.invert(tiny_pipe, source_image, SOURCE, seeded())
    both = p2p.edit_latents(tiny_pipe, inversion, item(TARGET))
    scheduler = tiny_pipe.scheduler
    x = inversion.tensors["x_T"].expand(2, -1, -1, -1)
    for t in [int(t) for t in scheduler.timesteps]:
        eps = ref_guided_batch(tiny_pipe, x, t, [SOURCE, TARGET], [2.0, 5.0])
        x = ref_ddim(scheduler, x, eps, t, 1000 // 3, False)
    # Batched vs per-branch UNet calls sum in another order: one call agrees to ~1e-6 relative (checked
    # above); CFG at w amplifies an ε difference by at most 2w − 1 = 9, and three chained steps add up:
    # 3 · 9 · 1e-6 ≈ 3e-5 of the latents' scale.
    assert (both - x).abs().max() <= 3e-5 * x.abs().max()


@pytest.mark.parametrize("method_class", [EFDDPM, NaiveDDPM])
@torch.no_grad()
def test_ddpm_noise_space_steps_match_reference(tiny_pipe, source_image, method_class):
    T, eta, w_src = 4, 1.0, 3.5
    method = method_class(num_steps=T, eta=eta, inversion_guidance_scale=w_src, guidance_scale=6.0, skip=T - 1, keep_z1=True)
    inversion = method.invert(tiny_pipe, source_image, SOURCE, seeded(7))
    scheduler, stride = tiny_pipe.scheduler, 1000 // T
    ascending = [int(t) for t in scheduler.timesteps.flip(0)]
    x0 = tiny_pipe.encode_image(source_image)

    # forward noising from the same generator stream (noise drawn for ascending t)
    g, noised, previous = seeded(7), [x0], (None, x0)
    for t in ascending:
        noise = torch.randn(x0.shape, generator=g)
        if method_class is EFDDPM:  # independent: √ᾱ_t x_0 + √(1−ᾱ_t) ε
            noised.append(ab(scheduler, t).sqrt() * x0 + (1 - ab(scheduler, t)).sqrt() * noise)
        else:  # Markov chain on the grid, ᾱ_{t_0} := 1
            ratio = ab(scheduler, t) / (1.0 if previous[0] is None else ab(scheduler, previous[0]))
            noised.append(ratio.sqrt() * previous[1] + (1 - ratio).sqrt() * noise)
        previous = (t, noised[-1])
    xts = inversion.tensors["xts"]
    assert (xts[1:] - torch.cat(noised[1:])).abs().max() <= 1e-6

    # z_n = (x̃_{n−1} − μ_n(x̃_n)) / (η σ_n), compared as η σ_n z_n (latent units)
    for n in range(T, 0, -1):
        mu, std = ref_mu_sigma(scheduler, xts[n:n + 1], ref_eps(tiny_pipe, xts[n:n + 1], ascending[n - 1], SOURCE, w_src),
                               ascending[n - 1], stride, eta)
        assert (std * inversion.tensors["zs"][n - 1] - (noised[n - 1] - mu)).abs().max() <= 1e-6

    # one editing step (n = 1) with the target prompt: x = μ_1(x̃_1; ε̂_tar) + η σ_1 z_1
    edited = method.edit_latents(tiny_pipe, inversion, item(TARGET))
    eps = ref_eps(tiny_pipe, xts[1:2], ascending[0], TARGET, 6.0)
    mu, std = ref_mu_sigma(scheduler, xts[1:2], eps, ascending[0], stride, eta)
    assert (edited - (mu + std * inversion.tensors["zs"][0])).abs().max() <= 1e-6


# ---- 6. NFE against the UNet counter ---------------------------------------------------------------


@torch.no_grad()
def test_nfe_matches_the_algorithm(tiny_pipe, source_image):
    counter = tiny_pipe.counter
    T, skip = 6, 2
    for method, branches in [(EFDDPM(num_steps=T, skip=skip), 1),
                             (NaiveDDPM(num_steps=T, skip=skip), 1),
                             (EFDDPMP2P(num_steps=T, skip=skip), 2)]:
        before = counter.snapshot()
        inversion = method.invert(tiny_pipe, source_image, SOURCE, seeded())
        spent = counter.since(before)
        assert spent["nfe"] == 2 * T and spent["forward_calls_by_batch"] == {"2": T}
        before = counter.snapshot()
        method.edit(tiny_pipe, inversion, item(TARGET), seeded())
        spent = counter.since(before)
        assert spent["nfe"] == 2 * (T - skip) * branches
        assert spent["forward_calls_by_batch"] == {str(2 * branches): T - skip}  # CFG pair + branches in one call

    N = 4
    for method, edit_batch in [(DDIM(num_steps=N), 2), (DDIMP2P(num_steps=N), 4)]:
        before = counter.snapshot()
        inversion = method.invert(tiny_pipe, source_image, SOURCE, seeded())
        assert counter.since(before)["forward_calls_by_batch"] == {"1": N}  # w = 1: conditional pass only
        before = counter.snapshot()
        method.edit(tiny_pipe, inversion, item(TARGET), seeded())
        assert counter.since(before)["forward_calls_by_batch"] == {str(edit_batch): N}


# ---- 7. one inversion serves an edit grid ----------------------------------------------------------------


@torch.no_grad()
def test_edit_grid_reuses_one_inversion(tiny_pipe, source_image, tmp_path):
    T = 4
    grid = [EFDDPM(num_steps=T, skip=skip, guidance_scale=cfg) for skip in (0, 1, 2) for cfg in (2.0, 6.0, 12.0)]
    assert len({tuple(sorted(m.inversion_hparams().items())) for m in grid}) == 1
    p2p_grid = [EFDDPMP2P(num_steps=T, skip=skip, guidance_scale=cfg, cross_replace_steps=xa, self_replace_steps=sa)
                for skip, xa in [(0, 0.2), (1, 0.6), (2, 0.8)] for cfg, sa in [(2.0, 0.0), (6.0, 0.2), (12.0, 0.5)]]
    assert [m.inversion_hparams() for m in p2p_grid] == [{"num_steps": T, "eta": 1.0, "inversion_guidance_scale": 3.5}] * 9

    inversion = grid[0].invert(tiny_pipe, source_image, SOURCE, seeded())
    inversion.save(str(tmp_path / "inv.safetensors"))
    cached = Inversion.load(str(tmp_path / "inv.safetensors"))
    snapshot = {k: v.clone() for k, v in cached.tensors.items()}
    before = tiny_pipe.counter.snapshot()
    outputs = [m.edit_latents(tiny_pipe, cached, item(TARGET)) for m in grid]
    assert tiny_pipe.counter.since(before)["nfe"] == sum(2 * (T - m.skip) for m in grid)  # no re-inversion
    assert all(torch.equal(cached.tensors[k], snapshot[k]) for k in snapshot)  # edits do not mutate it
    assert len({tuple(o.flatten()[:8].tolist()) for o in outputs}) == len(grid)  # every point differs


def test_hparams_are_validated_with_field_names():
    with pytest.raises(HyperparameterError, match=r"EFDDPM.skip=10"):
        EFDDPM(num_steps=10, skip=10)
    with pytest.raises(HyperparameterError, match=r"EFDDPM.eta=0"):
        EFDDPM(eta=0.0)
    with pytest.raises(HyperparameterError, match=r"DDIMP2P.cross_replace_steps"):
        DDIMP2P(cross_replace_steps=1.5)
    with pytest.raises(HyperparameterError, match=r"p2p_mode='swap'"):
        EFDDPMP2P(p2p_mode="swap")
