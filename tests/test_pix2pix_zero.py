"""pix2pix-zero (methods/pix2pix_zero.py): regularisation losses, edit direction, guidance, on the tiny pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bench.data.item import EditItem
from methods.base import HyperparameterError
from methods.ddim import DDIM
from methods.p2p import attention_control
from methods.pix2pix_zero import (
    CrossAttentionRecorder,
    Pix2PixZero,
    attention_loss,
    auto_correlation_loss,
    kl_loss,
    regularize_noise,
    roll_shifts,
    sentence_set,
)
from methods.steps import ddim_sampling_loop

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
ITEM = EditItem("img/0", "img", "unused.png", SOURCE, TARGET, blend_words=("cat", "dog"))
# the guided loop runs cross-attention through explicit softmax (ControlledAttnProcessor), plain DDIM through
# the fused kernel: float32 rounding ~1e-6 per step on unit-scale latents; a wrong row/embedding is O(0.1)
KERNEL_TOL = dict(rtol=1e-4, atol=1e-4)
FLOAT64_TOL = dict(rtol=1e-9, atol=1e-9)  # see test_a_batch_of_items_is_edited_as_each_item_alone


def method(**overrides) -> Pix2PixZero:
    return Pix2PixZero(**{"num_steps": 4, "num_inner_steps": 1, "num_ac_rolls": 2, **overrides})


def numpy_auto_correlation(noise: np.ndarray, shifts) -> float:
    total = 0.0
    for channel, levels in zip(noise, shifts):
        level = channel
        for k, s in enumerate(levels):
            if k:
                h, w = level.shape
                level = level.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            total += np.mean(level * np.roll(level, s, axis=0)) ** 2 + np.mean(level * np.roll(level, s, axis=1)) ** 2
    return total


def test_auto_correlation_and_kl_losses_match_an_independent_computation():
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    shifts = torch.stack([roll_shifts(torch.Generator().manual_seed(seed), 4, 16) for seed in (1, 2)])
    assert shifts.shape == (2, 4, 2)  # per sample, channel: 16² then 8² (stops at ≤ 8)
    assert ((shifts >= 0) & (shifts < torch.tensor([8, 4]))).all()
    assert torch.equal(shifts[0], roll_shifts(torch.Generator().manual_seed(1), 4, 16))
    assert not torch.equal(shifts[0], shifts[1])  # each sample rolls by its own shifts
    losses = auto_correlation_loss(noise, shifts)
    for sample, sample_shifts, loss in zip(noise.numpy(), shifts.tolist(), losses):
        assert float(loss) == pytest.approx(numpy_auto_correlation(sample, sample_shifts), rel=1e-12)
    for x, loss in zip(noise.numpy(), kl_loss(noise)):
        var = x.var(ddof=1)
        assert float(loss) == pytest.approx(var + x.mean() ** 2 - 1 - np.log(var + 1e-7), rel=1e-12)


def test_kl_step_follows_the_analytic_gradient():
    eps = 1.5 * torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) + 0.3
    out = regularize_noise(eps, lambda_ac=0.0, lambda_kl=2.0, num_inner_steps=1, num_ac_rolls=1,
                           generators=[torch.Generator()])
    x, n = eps[0], eps[0].numel()
    var, mu = x.var(), x.mean()
    grad = (1 - 1 / (var + 1e-7)) * 2 * (x - mu) / (n - 1) + 2 * mu / n
    torch.testing.assert_close(out[0], x - 2.0 * grad, rtol=1e-12, atol=1e-12)
    assert kl_loss(out) < kl_loss(eps)


def test_regularising_a_batch_is_regularising_each_sample_with_its_own_generator():
    """Sample b's result depends on its own ε̂ and generator only: the batch equals the samples one by one (the
    losses are per sample, so the gradient of their sum at sample b is b's own), in float64 to rounding."""
    eps = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    settings = dict(lambda_ac=20.0, lambda_kl=20.0, num_inner_steps=2, num_ac_rolls=3)
    batched = regularize_noise(eps, **settings, generators=[torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    for b, seed in enumerate((5, 6, 7)):
        alone = regularize_noise(eps[b:b + 1], **settings, generators=[torch.Generator().manual_seed(seed)])
        torch.testing.assert_close(batched[b:b + 1], alone, rtol=1e-12, atol=1e-12)
    other = regularize_noise(eps[:1], **settings, generators=[torch.Generator().manual_seed(6)])
    assert (other - batched[:1]).abs().max() > 1e-3  # the shifts matter: another generator moves ε̂
    with pytest.raises(ValueError, match="2 generators for 3 samples"):
        regularize_noise(eps, **settings, generators=[torch.Generator()] * 2)


def test_direction_is_the_mean_difference_of_the_sentence_sets(tiny_pipe):
    def independent_mean(word):
        sentences = sentence_set(word)
        ids = tiny_pipe.tokenizer(sentences, padding="max_length", max_length=77, truncation=True,
                                  return_tensors="pt").input_ids
        with torch.no_grad():
            return tiny_pipe.text_encoder(ids)[0].mean(0)

    direction = method().edit_direction(tiny_pipe, ITEM)
    torch.testing.assert_close(direction[0], independent_mean("dog") - independent_mean("cat"), rtol=1e-5, atol=1e-6)
    prompts = method(direction="prompts").edit_direction(tiny_pipe, ITEM)
    source, target = tiny_pipe.encode_prompts([SOURCE, TARGET])
    torch.testing.assert_close(prompts[0], target - source)


def test_missing_sentence_set_or_blend_words_raise_clear_errors(tiny_pipe):
    with pytest.raises(ValueError, match=r"no sentence set for 'unicorn'.*unicorn\.txt"):
        method().edit_direction(tiny_pipe, EditItem("i", "img", "x.png", SOURCE, TARGET, blend_words=("cat", "unicorn")))
    with pytest.raises(ValueError, match="has no blend_words"):
        method().edit_direction(tiny_pipe, EditItem("i", "img", "x.png", SOURCE, TARGET))


@torch.no_grad()
def test_unregularised_inversion_is_ddim_and_regularisation_changes_it(tiny_pipe, source_image):
    before = tiny_pipe.counter.snapshot()
    plain = method(lambda_ac=0.0, lambda_kl=0.0).invert(tiny_pipe, source_image, SOURCE, torch.Generator())
    assert tiny_pipe.counter.since(before)["nfe"] == 4  # N, w_inv = 1; the regularisation calls no UNet
    ddim = DDIM(num_steps=4).invert(tiny_pipe, source_image, SOURCE, torch.Generator())
    torch.testing.assert_close(plain.tensors["x_T"], ddim.tensors["x_T"])
    regular = method().invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    assert (regular.tensors["x_T"] - plain.tensors["x_T"]).abs().max() > 1e-3


@torch.no_grad()
def test_zero_guidance_is_plain_ddim_with_the_shifted_embedding(tiny_pipe, source_image):
    p2pz = method(lambda_xa=0.0, guidance_scale=3.0)
    inversion = p2pz.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    reference, edited = p2pz.edit_latents(tiny_pipe, inversion, ITEM)
    source = tiny_pipe.encode_prompts([SOURCE])
    shifted = source + p2pz.edit_direction(tiny_pipe, ITEM)
    tiny_pipe.scheduler.set_timesteps(4)
    x_T = inversion.tensors["x_T"]
    torch.testing.assert_close(edited[None], ddim_sampling_loop(tiny_pipe, x_T, shifted, source, 3.0), **KERNEL_TOL)
    torch.testing.assert_close(reference[None], ddim_sampling_loop(tiny_pipe, x_T, source, source, 1.0), **KERNEL_TOL)
    guided = method(guidance_scale=3.0, lambda_xa=5.0).edit_latents(tiny_pipe, inversion, ITEM)[1]
    assert (guided - edited).abs().max() > 1e-3


def test_guidance_step_lowers_the_attention_loss_and_costs_as_documented(tiny_pipe, source_image):
    p2pz = method(lambda_xa=1e-3)
    inversion = p2pz.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    tiny_pipe.scheduler.set_timesteps(4)
    t = tiny_pipe.scheduler.timesteps[0]
    source = tiny_pipe.encode_prompts([SOURCE])
    pair = torch.cat([source, source + p2pz.edit_direction(tiny_pipe, ITEM)])
    x = inversion.tensors["x_T"]
    recorder = CrossAttentionRecorder()
    with attention_control(tiny_pipe, recorder), torch.no_grad():
        tiny_pipe.unet_eps(x, t, source)
        reference = {name: m.repeat(2, 1, 1, 1) for name, m in recorder.maps.items()}
        tiny_pipe.unet_eps(torch.cat([x, x]), t, pair)
        loss_before = attention_loss(recorder.maps, reference)
        moved = p2pz.guided_pair(tiny_pipe, x, t, pair, recorder, reference)
        tiny_pipe.unet_eps(moved, t, pair)
        loss_after = attention_loss(recorder.maps, reference)
    assert 0 < loss_after < loss_before

    before = tiny_pipe.counter.snapshot()
    p2pz.edit(tiny_pipe, inversion, ITEM, torch.Generator())
    cost = tiny_pipe.counter.since(before)
    assert cost["forward_calls_by_batch"] == {"1": 4, "2": 8}  # 5N forward NFE
    # the loss reads attention maps, not ε̂: the backward never reaches the UNet output, where the counter
    # counts backward passes (docs/methods.md states the uncounted partial backward)
    assert cost["nfe_backward"] == 0


def test_processors_restored_after_an_exception_and_bad_values_raise(tiny_pipe, source_image, monkeypatch):
    p2pz = method()
    inversion = p2pz.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    original = {name: type(proc) for name, proc in tiny_pipe.unet.attn_processors.items()}
    monkeypatch.setattr(Pix2PixZero, "guided_pair", lambda *args: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        p2pz.edit(tiny_pipe, inversion, ITEM, torch.Generator())
    assert {name: type(proc) for name, proc in tiny_pipe.unet.attn_processors.items()} == original
    for bad in ({"lambda_ac": -1.0}, {"num_ac_rolls": 0}, {"lambda_xa": -0.1}, {"direction": "clip"}):
        with pytest.raises(HyperparameterError):
            method(**bad)


def test_a_batch_of_items_is_edited_as_each_item_alone(tiny_pipe_float64, source_image):
    """Two items (other images, directions, seeds) in one batch: every UNet call carries both, and each item's
    inversion and guided edit equal the item's own run. In float64, since the λ_xa step amplifies the float32
    rounding of batch 2 vs 1 (~1e-7) to ~1e-4: in float64 the same amplification leaves ~1e-12, below
    FLOAT64_TOL, while halving λ_xa — what a batch-mean loss would do to each item's step — moves the
    latents by more than 1e-3."""
    tiny_pipe = tiny_pipe_float64
    p2pz = method(lambda_xa=5.0, guidance_scale=3.0, direction="prompts")
    items = [ITEM, EditItem("img/1", "img1", "unused.png", "a photo of a dog", "a photo of a cat")]
    images = torch.cat([source_image, source_image.roll(7, dims=-1)]).double()
    seeds = (0, 1)
    with torch.no_grad():
        inversions = p2pz.invert_batch(tiny_pipe, images, [item.source_prompt for item in items],
                                       [torch.Generator().manual_seed(seed) for seed in seeds])
    batched = p2pz.edit_latents_batch(tiny_pipe, inversions, items)
    for b, (item, seed) in enumerate(zip(items, seeds)):
        with torch.no_grad():
            alone = p2pz.invert(tiny_pipe, images[b:b + 1], item.source_prompt, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(inversions[b].tensors["x_T"], alone.tensors["x_T"], **FLOAT64_TOL)
        torch.testing.assert_close(batched[2 * b:2 * b + 2], p2pz.edit_latents(tiny_pipe, alone, item), **FLOAT64_TOL)
    half = method(lambda_xa=2.5, guidance_scale=3.0, direction="prompts").edit_latents(tiny_pipe, inversions[0], ITEM)
    assert (half[1] - batched[1]).abs().max() > 1e-3
