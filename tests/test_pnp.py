"""Plug-and-Play (methods/pnp.py) on the tiny random pipeline: what a wrong injection would break."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

import methods.pnp as pnp_module
from bench.data.item import EditItem
from methods.base import HyperparameterError
from methods.ddim import DDIM
from methods.pnp import PlugAndPlay, PnPInjection, injection_modules

SOURCE, TARGET = "a photo of a cat", "a photo of a dog"
ITEM = EditItem("img/0", "img", "unused.png", SOURCE, TARGET, blend_words=("cat", "dog"))
# float32 UNet calls on batches of 3 vs 2 rows use different reduction blockings: ~1e-6 per step on
# latents of unit scale; a few steps stay far below this, a missing/extra injection is O(0.1)
BATCH_TOL = dict(rtol=1e-4, atol=1e-4)
FLOAT64_TOL = dict(rtol=1e-9, atol=1e-9)  # see test_a_batch_of_items_is_edited_as_each_item_alone


def hook_counts(module: torch.nn.Module) -> dict[str, int]:
    return {name: len(m._forward_hooks) for name, m in module.named_modules()}


def pnp(**overrides) -> PlugAndPlay:
    return PlugAndPlay(**{"num_steps": 5, "negative_prompt": "", **overrides})


@torch.no_grad()
def test_zero_injection_is_plain_ddim_editing_and_the_source_row_is_the_reconstruction(tiny_pipe, source_image):
    method = pnp(feature_injection=0.0, attention_injection=0.0, guidance_scale=3.0)
    inversion = method.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    source, target = method.edit_latents(tiny_pipe, inversion, ITEM)
    ddim = DDIM(num_steps=5, guidance_scale=3.0)
    torch.testing.assert_close(target[None], ddim.edit_latents(tiny_pipe, inversion, ITEM), **BATCH_TOL)
    reconstruction = DDIM(num_steps=5, guidance_scale=1.0).edit_latents(
        tiny_pipe, inversion, EditItem("img/0", "img", "unused.png", SOURCE, SOURCE))
    torch.testing.assert_close(source[None], reconstruction, **BATCH_TOL)
    # with injection the target differs (the hooks act on the edit)
    _, injected = pnp(guidance_scale=3.0).edit_latents(tiny_pipe, inversion, ITEM)
    assert (injected - target).abs().max() > 1e-2



@torch.no_grad()
def test_a_batch_of_items_is_edited_as_each_item_alone(tiny_pipe_float64, source_image):
    """Two items (other images and prompts) in one batch: each item's target rows take its own source row's
    features, so each item's inversion and edit equal its own run. In float64: guidance and injection amplify
    the float32 rounding of batch 2 vs 1 (~1e-7) to ~1e-4 on the tiny UNet, in float64 to ~1e-12, far below
    FLOAT64_TOL and below a target injected with the other item's source row (> 1e-2)."""
    tiny_pipe = tiny_pipe_float64
    method = pnp(guidance_scale=3.0, source_latents="inversion")
    items = [ITEM, EditItem("img/1", "img1", "unused.png", "a photo of a dog", "a photo of a bird")]
    images = torch.cat([source_image, source_image.roll(7, dims=-1)]).double()
    inversions = method.invert_batch(tiny_pipe, images, [item.source_prompt for item in items],
                                     [torch.Generator()] * 2)
    batched = method.edit_latents_batch(tiny_pipe, inversions, items)
    for b, item in enumerate(items):
        alone = method.invert(tiny_pipe, images[b:b + 1], item.source_prompt, torch.Generator())
        for name in ("x_T", "trajectory"):
            torch.testing.assert_close(inversions[b].tensors[name], alone.tensors[name], **FLOAT64_TOL)
        torch.testing.assert_close(batched[2 * b:2 * b + 2], method.edit_latents(tiny_pipe, alone, item), **FLOAT64_TOL)
    swapped = method.edit_latents_batch(tiny_pipe, inversions[::-1], items)  # item 0's prompts on item 1's image
    assert (swapped[1] - batched[1]).abs().max() > 1e-2

def test_injection_modules_are_decoder_layer_4_and_self_attention_4_to_11(tiny_pipe):
    unet = tiny_pipe.unet  # tiny: up_blocks[0] (8²) and up_blocks[1] (16²) both have attention, 2 layers each
    feature, attentions = injection_modules(unet)
    assert feature is unet.up_blocks[0].resnets[1].conv2
    expected = [unet.up_blocks[0].attentions[1], *unet.up_blocks[1].attentions]
    assert attentions == [a.transformer_blocks[0].attn1 for a in expected]


@torch.no_grad()
def test_hooks_copy_the_source_row_only_in_active_steps_and_only_at_the_hooked_layers(tiny_pipe):
    unet = tiny_pipe.unet
    feature, attentions = injection_modules(unet)
    untouched = unet.up_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    seen: dict[str, torch.Tensor] = {}

    def spy(name):
        return lambda module, args, output: seen.__setitem__(name, output)

    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = torch.randn(3, 77, 32, generator=torch.Generator().manual_seed(2))
    before = hook_counts(unet)
    injection = PnPInjection(unet, feature_steps=2, attention_steps=1)
    with injection.installed():  # spies registered after the injection hooks see their outputs
        spies = [feature.register_forward_hook(spy("feature")), untouched.register_forward_hook(spy("untouched")),
                 *[m.register_forward_hook(spy(f"{kind}{k}")) for k, a in enumerate(attentions)
                   for kind, m in (("q", a.to_q), ("k", a.to_k))]]
        for step in range(3):
            injection.step = step
            unet(latents, 500, encoder_hidden_states=text)
            rows_equal = {name: bool(torch.equal(out[1], out[0]) and torch.equal(out[2], out[0]))
                          for name, out in seen.items()}
            assert rows_equal.pop("feature") == (step < 2)
            assert rows_equal.pop("untouched") is False
            assert set(rows_equal.values()) == {step < 1}, (step, rows_equal)
        for handle in spies:
            handle.remove()
    assert hook_counts(unet) == before


def test_edit_injects_in_the_first_tau_steps(tiny_pipe, source_image, monkeypatch):
    """N = 5, τ_f = 0.6 → features in steps 0–2; τ_A = 0.4 → queries/keys in steps 0–1 (int(N·τ))."""
    log: list[tuple[bool, bool]] = []

    class Spy(PnPInjection):
        @contextmanager
        def installed(self):
            feature, attentions = injection_modules(self.unet)
            state = {}
            with super().installed():
                handles = [feature.register_forward_hook(lambda m, a, out: state.__setitem__("f", out)),
                           attentions[-1].to_k.register_forward_hook(lambda m, a, out: state.__setitem__("k", out))]
                handles.append(self.unet.register_forward_hook(lambda m, a, out: log.append(
                    tuple(bool(torch.equal(state[n][2], state[n][0])) for n in ("f", "k")))))
                try:
                    yield self
                finally:
                    for handle in handles:
                        handle.remove()

    monkeypatch.setattr(pnp_module, "PnPInjection", Spy)
    method = pnp(feature_injection=0.6, attention_injection=0.4)
    inversion = method.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    method.edit(tiny_pipe, inversion, ITEM, torch.Generator().manual_seed(0))
    assert log == [(True, True), (True, True), (True, False), (False, False), (False, False)]


def test_hooks_removed_after_an_exception(tiny_pipe, source_image, monkeypatch):
    method = pnp()
    inversion = method.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    before = hook_counts(tiny_pipe.unet)
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return tiny_pipe.unet(args[0], args[1], encoder_hidden_states=args[2]).sample

    monkeypatch.setattr(tiny_pipe, "unet_eps", failing)
    with pytest.raises(RuntimeError, match="boom"):
        method.edit(tiny_pipe, inversion, ITEM, torch.Generator().manual_seed(0))
    assert hook_counts(tiny_pipe.unet) == before


@torch.no_grad()
def test_nfe_and_inversion_latents_for_the_source_row(tiny_pipe, source_image):
    method = pnp(source_latents="inversion")
    before = tiny_pipe.counter.snapshot()
    inversion = method.invert(tiny_pipe, source_image, SOURCE, torch.Generator().manual_seed(0))
    assert tiny_pipe.counter.since(before)["nfe"] == 5  # N, w_inv = 1
    before = tiny_pipe.counter.snapshot()
    source, _ = method.edit_latents(tiny_pipe, inversion, ITEM)
    assert tiny_pipe.counter.since(before)["forward_calls_by_batch"] == {"3": 5}  # 3N NFE
    torch.testing.assert_close(source, inversion.tensors["trajectory"][0, 0])  # ends on the stored x_0


def test_empty_inversion_prompt_changes_the_inversion_and_bad_values_raise(tiny_pipe, source_image):
    assert "inversion_prompt" in PlugAndPlay.inversion_fields
    with torch.no_grad():
        with_source = pnp().invert(tiny_pipe, source_image, SOURCE, torch.Generator())
        with_empty = pnp(inversion_prompt="empty").invert(tiny_pipe, source_image, SOURCE, torch.Generator())
    assert (with_source.tensors["x_T"] - with_empty.tensors["x_T"]).abs().max() > 1e-3
    for bad in ({"feature_injection": 1.5}, {"attention_injection": -0.1}, {"source_latents": "forward"},
                {"inversion_prompt": "target"}):
        with pytest.raises(HyperparameterError):
            pnp(**bad)
