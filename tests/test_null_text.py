"""Null-text inversion + P2P on the tiny pipeline (CPU, fp32, few steps): reconstruction vs DDIM, the inner
step against an independent implementation, early stop (per item in a batch, stopped items frozen), NFE
accounting, determinism, crash safety."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PROMPT, SCHEDULER_OFFSET0, ListDataset
from PIL import Image

from bench import records
from bench.data.item import EditItem
from bench.edit_job import EditJob
from bench.job_parts import method_from_config
from methods.base import Inversion
from methods.ddim import DDIM
from methods.null_text_p2p import NullTextP2P
from methods.timestep_fit import early_stop_threshold, optimise_items

pytestmark = pytest.mark.usefixtures("one_thread")


def reconstruction_item(prompt: str = PROMPT) -> EditItem:
    return EditItem("rec", "rec", "unused.png", prompt, prompt)


def latent_mse(a: torch.Tensor, b: torch.Tensor) -> float:
    return torch.mean((a - b) ** 2).item()


def test_reconstruction_beats_plain_ddim_at_cfg_7_5_and_losses_are_recorded(pipe, source_image, generator):
    steps = 5
    x0 = pipe.encode_image(source_image)
    ddim = DDIM(num_steps=steps, inversion_guidance_scale=1.0, guidance_scale=7.5)
    ddim_rec = ddim.edit_latents(pipe, ddim.invert(pipe, source_image, PROMPT, generator), reconstruction_item())
    ddim_error = latent_mse(ddim_rec[0], x0[0])

    method = NullTextP2P(num_steps=steps, guidance_scale=7.5, num_inner_steps=10)
    inversion = method.invert(pipe, source_image, PROMPT, generator)
    nti_rec = method.edit_latents(pipe, inversion, reconstruction_item())[0]  # the source branch
    nti_error = latent_mse(nti_rec, x0[0])
    print(f"latent MSE to x0 at w=7.5: DDIM {ddim_error:.4f}, null-text {nti_error:.4f}; "
          f"iterations {inversion.meta['iterations']}")
    assert nti_error < ddim_error

    meta = inversion.meta
    assert inversion.tensors["null_embeddings"].shape == (steps, 77, 32)
    assert len(meta["losses"]) == len(meta["initial_losses"]) == len(meta["iterations"]) == steps
    assert all(1 <= k <= 10 for k in meta["iterations"])
    # within each timestep the optimisation lowers the loss, on average over the timesteps
    assert np.mean(meta["losses"]) < np.mean(meta["initial_losses"])
    assert np.mean(np.array(meta["losses"]) <= np.array(meta["initial_losses"]) + 1e-7) == 1.0


def alpha_bar(scheduler, t: int) -> torch.Tensor:
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def test_one_inner_step_matches_an_independent_implementation(pipe, source_image, generator):
    """One Adam step on ∅ at i = 0, written from docs/methods.md#null-text-inversion-and-stylediffusion."""
    steps, w = 3, 7.5
    method = NullTextP2P(num_steps=steps, guidance_scale=w, num_inner_steps=1, early_stop_epsilon=0.0)
    inversion = method.invert(pipe, source_image, PROMPT, generator)

    scheduler = pipe.scheduler  # the method left it at `steps` steps: timesteps 666, 333, 0
    timesteps = [int(t) for t in scheduler.timesteps]
    delta = 1000 // steps
    assert timesteps == [666, 333, 0]
    cond = pipe.encode_prompts([PROMPT])
    uncond = pipe.encode_prompts([""])

    def unet(x, t, context):
        return pipe.unet(x, t, encoder_hidden_states=context).sample

    with torch.no_grad():  # DDIM inversion, w = 1: x_t = √ᾱ_t x̂_0(x_{t−Δ}, ε_θ(x_{t−Δ}, t)) + √(1−ᾱ_t) ε
        trajectory = [pipe.encode_image(source_image)]
        for t in reversed(timesteps):
            x, eps = trajectory[-1], unet(trajectory[-1], t, cond)
            a_t, a_prev = alpha_bar(scheduler, t), alpha_bar(scheduler, t - delta)
            x0_hat = (x - torch.sqrt(1 - a_prev) * eps) / torch.sqrt(a_prev)
            trajectory.append(torch.sqrt(a_t) * x0_hat + torch.sqrt(1 - a_t) * eps)
    torch.testing.assert_close(trajectory[-1], inversion.tensors["x_T"], rtol=0, atol=1e-5)

    t, z = timesteps[0], trajectory[-1]
    target = trajectory[-2]  # x*_{t−Δ}
    with torch.no_grad():
        eps_cond = unet(z, t, cond)
    null = uncond.clone().requires_grad_(True)
    eps_uncond = unet(z, t, null)
    eps = eps_uncond + w * (eps_cond - eps_uncond)
    a_t, a_prev = alpha_bar(scheduler, t), alpha_bar(scheduler, t - delta)
    x_prev = torch.sqrt(a_prev) * (z - torch.sqrt(1 - a_t) * eps) / torch.sqrt(a_t) + torch.sqrt(1 - a_prev) * eps
    loss = ((x_prev - target) ** 2).mean()
    (grad,) = torch.autograd.grad(loss, null)

    lr, beta1, beta2, adam_eps = 1e-2 * (1 - 0 / 100), 0.9, 0.999, 1e-8  # Adam, first step
    m_hat = (1 - beta1) * grad / (1 - beta1)
    v_hat = (1 - beta2) * grad**2 / (1 - beta2)
    expected = uncond - lr * m_hat / (torch.sqrt(v_hat) + adam_eps)
    got = inversion.tensors["null_embeddings"][:1]
    assert (expected - uncond).abs().max() > 1e-3  # the step moved ∅
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-6)
    assert inversion.meta["iterations"][0] == 1
    assert inversion.meta["initial_losses"][0] == pytest.approx(loss.item(), rel=1e-5)


def run_quadratics(centres: list[float], step_index: int, epsilon: float):
    """``optimise_items`` on loss_b = (x_b − c_b)² from x_b = 0: the final x, the fits, the active lists of
    the calls and each item's losses in order."""
    xs = [torch.zeros((), requires_grad=True) for _ in centres]
    calls, losses = [], [[] for _ in centres]

    def item_losses(active):
        calls.append(list(active))
        values = torch.stack([(xs[b] - centres[b]) ** 2 for b in active])
        for b, value in zip(active, values.tolist()):
            losses[b].append(value)
        return values

    fits = optimise_items([[x] for x in xs], item_losses, step_index, budget=100, epsilon=epsilon)
    return [x.detach() for x in xs], fits, calls, losses


def test_each_item_stops_at_its_first_loss_below_the_threshold_and_stays_frozen():
    """Adam lr_i ≈ 1e-2 per step: item 0 ((x − 3)²) falls below 8.9 + i·2e-5 after a few iterations, item 1
    ((x − 3.2)²) after ~20. Item 0 leaves the batch at its stop and is never stepped again: its x is bit-equal to
    its run alone although item 1 (with its own Adam moments) goes on; item 1 also equals its run alone."""
    step_index, epsilon = 2, 8.9
    threshold = early_stop_threshold(epsilon, step_index)
    xs, fits, calls, losses = run_quadratics([3.0, 3.2], step_index, epsilon)
    for b, centre in enumerate((3.0, 3.2)):
        alone_x, (alone_fit,), _, alone_losses = run_quadratics([centre], step_index, epsilon)
        first_below = next(j for j, value in enumerate(losses[b]) if value < threshold) + 1
        assert fits[b].iterations == first_below == len(losses[b]) < 100
        assert fits[b].final_loss == losses[b][-1] < threshold <= losses[b][-2]
        assert fits[b].initial_loss == losses[b][0] == pytest.approx(centre**2)  # float32 (x − c)² at x = 0
        assert torch.equal(xs[b], alone_x[0]) and fits[b] == alone_fit and losses[b] == alone_losses[0]
    stop = fits[0].iterations
    assert 1 < stop < fits[1].iterations
    assert calls == [[0, 1]] * stop + [[1]] * (fits[1].iterations - stop)  # a stopped item leaves the forward
    assert xs[0].item() == pytest.approx(stop * 1e-2 * (1 - step_index / 100), rel=1e-3)  # ≈ sign steps of lr_i


def test_a_batch_runs_each_items_early_stop_in_the_unet_calls(pipe, source_image, generator):
    """B = 2, N = 2, ε between the two items' first losses at step 0: there the lower item stops after one
    iteration and the other goes on in UNet calls of its row alone (step 1, t = 0, is the identity DDIM step:
    both stop at once). Each item's fit is the one of its run alone."""
    images = torch.cat([source_image, source_image.flip(-1).neg()])

    def alone(epsilon: float) -> list[Inversion]:
        method = NullTextP2P(num_steps=2, num_inner_steps=3, early_stop_epsilon=epsilon)
        return [method.invert(pipe, image[None], PROMPT, generator) for image in images]

    first = [inversion.meta["initial_losses"][0] for inversion in alone(0.0)]
    low = int(np.argmin(first))
    assert first[low] < first[1 - low]  # two different losses: ε = their geometric mean sits between them
    epsilon = float(np.sqrt(first[0] * first[1]))
    single = alone(epsilon)
    assert single[low].meta["iterations"] == [1, 1]
    k = single[1 - low].meta["iterations"][0]
    assert k > 1 and single[1 - low].meta["iterations"][1] == 1

    before = pipe.counter.snapshot()
    batch = NullTextP2P(num_steps=2, num_inner_steps=3, early_stop_epsilon=epsilon).invert_batch(
        pipe, images, [PROMPT, PROMPT], [generator, generator])
    spent = pipe.counter.since(before)
    for b in range(2):
        assert batch[b].meta["iterations"] == single[b].meta["iterations"]
        assert batch[b].meta["initial_losses"] == pytest.approx(single[b].meta["initial_losses"], rel=1e-4)
        assert batch[b].tensors["null_embeddings"].shape == (2, 77, 32)
    assert spent["backward_calls_by_batch"] == {"2": 2, "1": k - 1}
    # per step: ε_c, the first iteration and the z̄ update carry both rows (+ 2 DDIM inversion calls)
    assert spent["forward_calls_by_batch"] == {"2": 2 + 2 * 3, "1": k - 1}


def test_early_stop_and_unet_pass_counts(pipe, source_image, generator):
    steps = 4
    for epsilon, expect_all_one in ((1e3, True), (0.0, False)):
        method = NullTextP2P(num_steps=steps, num_inner_steps=3, early_stop_epsilon=epsilon)
        before = pipe.counter.snapshot()
        inversion = method.invert(pipe, source_image, PROMPT, generator)
        spent = pipe.counter.since(before)
        iterations = inversion.meta["iterations"]
        assert iterations == ([1] * steps if expect_all_one else [3] * steps)
        # DDIM inversion (N, w=1) + per step: ε_c once, k_i ε_θ(·, ∅) with grad, one ε_θ(·, ∅_t) for z̄
        assert spent["nfe"] == steps + sum(k + 2 for k in iterations)
        assert spent["nfe_backward"] == sum(iterations)
        assert spent["backward_calls_by_batch"] == {"1": sum(iterations)}

    before = pipe.counter.snapshot()
    method.edit(pipe, inversion, EditItem("e", "e", "x.png", PROMPT, "a red square on a blue background"), generator)
    spent = pipe.counter.since(before)
    assert (spent["nfe"], spent["nfe_backward"], spent["forward_calls_by_batch"]) == (4 * steps, 0, {"4": steps})


def test_same_seed_gives_identical_optimised_embeddings(pipe, source_image):
    method = NullTextP2P(num_steps=3, num_inner_steps=3)
    first = method.invert(pipe, source_image, PROMPT, torch.Generator().manual_seed(0))
    second = method.invert(pipe, source_image, PROMPT, torch.Generator().manual_seed(0))
    assert first.tensors.keys() == second.tensors.keys()
    for name in first.tensors:
        assert torch.equal(first.tensors[name], second.tensors[name]), name
    assert first.meta == second.meta


def test_edit_uses_the_per_step_null_embeddings_for_both_branches(pipe, source_image, generator):
    method = NullTextP2P(num_steps=3, num_inner_steps=2)
    inversion = method.invert(pipe, source_image, PROMPT, generator)
    seen = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["encoder_hidden_states"].clone()), with_kwargs=True)
    try:
        method.edit_latents(pipe, inversion, EditItem("e", "e", "x.png", PROMPT, "a red square on a blue background"))
    finally:
        hook.remove()
    nulls = inversion.tensors["null_embeddings"]
    assert len(seen) == 3
    for i, context in enumerate(seen):
        assert torch.equal(context[0], nulls[i]) and torch.equal(context[1], nulls[i])


def test_crash_mid_optimisation_leaves_no_inversion_and_a_failed_record(tmp_path, pipe, monkeypatch):
    image_path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(image_path)
    items = [EditItem("img/0", "img", str(image_path), PROMPT, "a red square on a blue background")]
    method, scheduler_cfg = method_from_config({"_target_": "methods.null_text_p2p.NullTextP2P",
                                                "num_steps": 3, "num_inner_steps": 2,
                                                "scheduler": dict(SCHEDULER_OFFSET0)})
    real = optimise_items
    calls = []

    def crash_on_second_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash in the null-text optimisation")
        return real(*args, **kwargs)

    monkeypatch.setattr("methods.null_text_p2p.optimise_items", crash_on_second_step)
    results = tmp_path / "results"

    def job():
        return EditJob(pipe=pipe, method=method, method_label="null_text_p2p", scheduler_cfg=scheduler_cfg,
                       dataset=ListDataset(items), items=items, results_dir=results, seed=0, progress=False)

    summary = job().run()
    assert (summary.ok, summary.failed, summary.inversions_computed) == (0, 1, 0)
    inversion_dir = results / "inversions" / "null_text_p2p"
    assert not inversion_dir.exists() or not any(inversion_dir.iterdir())
    (record,) = list(records.iter_edit_records(results))
    assert record["status"] == "failed"
    assert record["error"]["type"] == "RuntimeError" and "simulated crash" in record["error"]["message"]

    monkeypatch.setattr("methods.null_text_p2p.optimise_items", real)
    again = job().run()
    assert (again.ok, again.inversions_computed) == (1, 1)
    (saved,) = list(inversion_dir.iterdir())
    assert saved.suffix == ".safetensors"
    meta = Inversion.load(str(saved)).meta
    (ok,) = [r for r in records.iter_edit_records(results) if r["status"] == "ok"]
    assert ok["cost"]["inversion_nfe_backward"] == meta["nfe_backward"] == sum(meta["iterations"])
