"""StyleDiffusion + P2Plus on the tiny pipeline (CPU, fp32, few steps and inner iterations): the value path,
reconstruction through the edit path, iteration budgets, early stop, NFE accounting, determinism, crash safety."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import PROMPT, SCHEDULER_OFFSET0, ListDataset
from PIL import Image

from bench import records
from bench.data.item import EditItem
from bench.edit_job import EditJob
from bench.job_parts import method_from_config
from methods.base import HyperparameterError, Inversion
from methods.p2p import attention_control, sd_equivalent_resolution
from methods.steps import classifier_free_guidance, ddim_step
from methods.stylediffusion_mapping import MappingNetwork, clip_image_tokens, load_mapping_networks, styled_value
from methods.stylediffusion_p2plus import StyleDiffusionP2Plus, ValueInjectionRecorder, target_maps_index

pytestmark = pytest.mark.usefixtures("one_thread")

TARGET = "a red square on a blue background"
SMALL = dict(num_steps=4, num_inner_steps=5, local_blend=False, reweight=False)  # items here have no blend words


def item(target: str = TARGET) -> EditItem:
    return EditItem("e", "e", "unused.png", PROMPT, target)


def test_iteration_budgets_match_the_reference_schedule():
    budgets = StyleDiffusionP2Plus().inner_step_budgets()  # 30 steps, num_inner_steps 100
    assert budgets == [100, 91, 82, 75, 68, 61, 55, 50, 45, 41, 37, 34, 31, 28, 25, 23, 21, 19, 17, 15, 14, 13, 12,
                       11, 10, 9, 8, 7, 7, 6]
    assert sum(budgets) == 1015
    assert StyleDiffusionP2Plus(num_steps=50).inner_step_budgets()[-1] == math.ceil(100 * math.exp(-4.9))
    assert [target_maps_index(i, 30) for i in (0, 1, 2, 29)] == [29, 29, 28, 1]
    with pytest.raises(HyperparameterError, match="uncond_self_replace_steps"):
        StyleDiffusionP2Plus(uncond_self_replace_steps=1.5)
    with pytest.raises(HyperparameterError, match="value_replace_steps"):
        StyleDiffusionP2Plus(value_replace_steps=-0.1)


def test_image_tokens_come_from_the_encoder_and_batchnorm_uses_batch_statistics(pipe, source_image, generator):
    encoder = pipe.get_image_encoder()
    features = clip_image_tokens(encoder, source_image)
    tokens = (encoder.config.image_size // encoder.config.patch_size) ** 2 + 1  # patches + CLS: tiny 65, SD 197
    assert features.shape == (1, tokens, encoder.config.hidden_size) == (1, 65, 32)
    # post-layernorm on every token: the CLS row equals the encoder's pooled output
    pixels_out = encoder.post_layernorm(encoder(pixel_values=torch.zeros(1, 3, 32, 32)).last_hidden_state)
    assert torch.allclose(pixels_out[:, 0], encoder(pixel_values=torch.zeros(1, 3, 32, 32)).pooler_output)

    net = MappingNetwork(tokens, 32, 32).initialise(generator)
    assert not list(net.buffers()) and net.feature_adapter is None  # no running statistics to store
    scale_train, shift_train = net.train()(features)
    scale_eval, shift_eval = net.eval()(features)
    assert scale_train.shape == shift_train.shape == (1, 77, 32)
    assert torch.equal(scale_train, scale_eval) and torch.equal(shift_train, shift_eval)
    assert sum(p.numel() for p in net.parameters()) == 65 * 154 + 154 + 154 * 154 + 154 + 2 * 154 + 154 * 154 + 154
    # an encoder narrower than the text embedding (toy world: 96 vs 128) gets a Linear adapter first
    narrow = MappingNetwork(tokens, 24, 32).initialise(generator)
    assert narrow.feature_adapter.weight.shape == (32, 24)
    assert all(x.shape == (1, 77, 32) for x in narrow(torch.randn(1, tokens, 24)))


def test_mapping_network_reaches_only_the_value_path(pipe, source_image, generator):
    encoder_inputs = {"to_k": [], "to_v": []}
    hooks = [getattr(module, name).register_forward_pre_hook(
        lambda m, args, name=name: encoder_inputs[name].append(args[0]))
        for module_name, module in pipe.unet.named_modules() if module_name.endswith("attn2")
        for name in ("to_k", "to_v")]
    try:
        pipe.scheduler.set_timesteps(4)
        cond = pipe.encode_prompts([PROMPT])
        features = clip_image_tokens(pipe.get_image_encoder(), source_image)
        net = MappingNetwork(*features.shape[1:], cond.shape[-1]).initialise(generator).requires_grad_(True)
        control = ValueInjectionRecorder(sd_equivalent_resolution(pipe.unet, 16))
        with attention_control(pipe, control):
            control.scale_shift = net(features)
            latent = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(1))
            eps = pipe.unet_eps(latent, pipe.scheduler.timesteps[0], cond)
        styled = styled_value(cond, *control.scale_shift)
        assert encoder_inputs["to_k"] and len(encoder_inputs["to_k"]) == len(encoder_inputs["to_v"])
        for key_input, value_input in zip(encoder_inputs["to_k"], encoder_inputs["to_v"]):
            assert torch.equal(key_input, cond) and not key_input.requires_grad  # keys: plain c
            assert torch.equal(value_input, styled) and value_input.requires_grad  # values: c ⊙ s + b
        assert control.maps and all(m.requires_grad for m in control.maps.values())
        eps.square().mean().backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())

        # editing: every cross-attention key sees the plain [∅, ∅, c_src, c_tgt]
        for inputs in encoder_inputs.values():
            inputs.clear()
        method = StyleDiffusionP2Plus(**SMALL)
        inversion = method.invert(pipe, source_image, PROMPT, generator)
        encoder_inputs["to_k"].clear()
        encoder_inputs["to_v"].clear()
        method.edit_latents(pipe, inversion, item())
        plain = torch.cat([pipe.encode_prompts(["", ""]), pipe.encode_prompts([PROMPT, TARGET])])
        assert len(encoder_inputs["to_k"]) == 4 * len([n for n in pipe.unet.attn_processors if "attn2" in n])
        for key_input, value_input in zip(encoder_inputs["to_k"], encoder_inputs["to_v"]):
            assert torch.equal(key_input, plain)
            assert torch.equal(value_input[:2], plain[:2])  # unconditional rows keep ∅ on the value path too
            assert not torch.equal(value_input[2], plain[2])  # the source branch always uses M_i
    finally:
        for hook in hooks:
            hook.remove()


def reconstruct(pipe, method: StyleDiffusionP2Plus, inversion: Inversion) -> torch.Tensor:
    """Single-branch sampling with M_i on the conditional value path (what the optimisation fitted)."""
    pipe.scheduler.set_timesteps(method.num_steps)
    cond, uncond = pipe.encode_prompts([PROMPT, ""]).chunk(2)
    features = inversion.tensors["image_features"].float()
    control = ValueInjectionRecorder(sd_equivalent_resolution(pipe.unet, 16))
    latent = inversion.tensors["x_T"]
    with torch.no_grad(), attention_control(pipe, control):
        networks = load_mapping_networks(inversion, method.num_steps, cond.shape[-1])
        for net, t in zip(networks, pipe.scheduler.timesteps):
            control.scale_shift = None
            eps_uncond = pipe.unet_eps(latent, t, uncond)
            control.scale_shift = net(features)
            eps = classifier_free_guidance(eps_uncond, pipe.unet_eps(latent, t, cond), method.guidance_scale)
            latent = ddim_step(pipe.scheduler, eps, int(t), latent)
    return latent


def test_tau_v_one_and_same_prompt_reproduce_the_reconstruction(pipe, source_image, generator):
    method = StyleDiffusionP2Plus(**SMALL, value_replace_steps=1.0)
    inversion = method.invert(pipe, source_image, PROMPT, generator)
    source_row, target_row = method.edit_latents(pipe, inversion, item(PROMPT))
    reconstruction = reconstruct(pipe, method, inversion)[0]
    torch.testing.assert_close(target_row, source_row, rtol=0, atol=1e-6)
    # batched P2Plus rows vs single-branch calls: float32 rounding only (max 6e-5 on |x| ≤ 6; 2e-13 in float64)
    torch.testing.assert_close(source_row, reconstruction, rtol=1e-4, atol=1e-4)
    x0 = pipe.encode_image(source_image)[0]
    print(f"StyleDiffusion reconstruction latent MSE {torch.mean((source_row - x0) ** 2).item():.4f}; "
          f"iterations {inversion.meta['iterations']}")

    # τ_v = 0: the target branch drops M_i at once, so even the same prompt no longer reproduces it
    plain_target = StyleDiffusionP2Plus(**SMALL, value_replace_steps=0.0).edit_latents(pipe, inversion, item(PROMPT))[1]
    assert (plain_target - source_row).abs().max() > 1e-3


def test_early_stop_budgets_and_unet_pass_counts(pipe, source_image, generator):
    for epsilon, stops_at_once in ((1e3, True), (0.0, False)):
        method = StyleDiffusionP2Plus(**SMALL, early_stop_epsilon=epsilon)
        before = pipe.counter.snapshot()
        inversion = method.invert(pipe, source_image, PROMPT, generator)
        spent = pipe.counter.since(before)
        iterations = inversion.meta["iterations"]
        assert method.inner_step_budgets() == [5, 5, 5, 4]
        assert iterations == ([1] * 4 if stops_at_once else [5, 5, 5, 4])
        # DDIM inversion (N) + per step: ε_u once, k_i conditional passes with grad, one with the trained M_i
        assert spent["nfe"] == 4 + sum(k + 2 for k in iterations)
        assert spent["nfe_backward"] == sum(iterations)
        assert len(inversion.meta["losses"]) == len(inversion.meta["initial_losses"]) == 4
        if not stops_at_once:
            assert np.mean(inversion.meta["losses"]) < np.mean(inversion.meta["initial_losses"])

    before = pipe.counter.snapshot()
    method.edit(pipe, inversion, item(), generator)
    assert pipe.counter.since(before)["forward_calls_by_batch"] == {"4": 4}


def test_same_seed_gives_identical_mapping_networks(pipe, source_image):
    method = StyleDiffusionP2Plus(num_steps=3, num_inner_steps=3)
    first = method.invert(pipe, source_image, PROMPT, torch.Generator().manual_seed(0))
    second = method.invert(pipe, source_image, PROMPT, torch.Generator().manual_seed(0))
    other = method.invert(pipe, source_image, PROMPT, torch.Generator().manual_seed(1))
    assert first.tensors.keys() == second.tensors.keys()
    assert len([k for k in first.tensors if k.startswith("mapping.")]) == 3 * 8
    for name in first.tensors:
        assert torch.equal(first.tensors[name], second.tensors[name]), name
    assert first.meta == second.meta
    assert not torch.equal(first.tensors["mapping.0.conv_start.weight"], other.tensors["mapping.0.conv_start.weight"])


def test_crash_mid_optimisation_leaves_no_inversion_and_a_failed_record(tmp_path, pipe, monkeypatch):
    image_path = tmp_path / "img.png"
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(image_path)
    items = [EditItem("img/0", "img", str(image_path), PROMPT, TARGET)]
    method, scheduler_cfg = method_from_config({"_target_": "methods.stylediffusion_p2plus.StyleDiffusionP2Plus",
                                                "num_steps": 3, "num_inner_steps": 2,
                                                "scheduler": dict(SCHEDULER_OFFSET0)})

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in the mapping-network optimisation")

    monkeypatch.setattr("methods.stylediffusion_p2plus.optimise_items", crash)
    results = tmp_path / "results"
    summary = EditJob(pipe=pipe, method=method, method_label="stylediffusion_p2plus", scheduler_cfg=scheduler_cfg,
                      dataset=ListDataset(items), items=items, results_dir=results, seed=0, progress=False).run()
    assert (summary.ok, summary.failed, summary.inversions_computed) == (0, 1, 0)
    inversion_dir = results / "inversions" / "stylediffusion_p2plus"
    assert not inversion_dir.exists() or not any(inversion_dir.iterdir())
    (record,) = list(records.iter_edit_records(results))
    assert record["status"] == "failed" and "simulated crash" in record["error"]["message"]
    # the attention processors were restored despite the exception
    assert not any(type(p).__name__ == "ControlledAttnProcessor" for p in pipe.unet.attn_processors.values())
