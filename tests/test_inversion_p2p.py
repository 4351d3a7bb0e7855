"""Negative-prompt inversion and Direct Inversion (+ P2P): the property each adds to DDIM + P2P, on the tiny
pipeline, and the toy-world reconstruction sanity check of docs/methods.md (target = source, w = 7.5)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.images import psnr
from bench.models import load_pipeline
from bench.perf.setup import source_tensor, write_item
from methods.ddim import DDIM
from methods.direct_inversion_p2p import DirectInversionP2P
from methods.inversion_p2p import InversionP2P
from methods.negative_prompt_p2p import NegativePromptP2P
from methods.steps import ddim_sampling_loop

pytestmark = pytest.mark.usefixtures("one_thread")
TOLERANCE = 1e-4  # fp32 rounding between fused and explicit attention kernels, relative to max(1, |x|)


@pytest.fixture(scope="module")
def setup(tiny_model_cfg, tmp_path_factory):
    from tests.conftest import SCHEDULER_OFFSET0

    pipe = load_pipeline(tiny_model_cfg, SCHEDULER_OFFSET0)
    item = write_item(tmp_path_factory.mktemp("item"), pipe.resolution)
    return pipe, item, source_tensor(item, pipe.resolution, pipe.device, pipe.dtype)


def test_direct_inversion_keeps_the_source_row_on_the_inversion_path(setup):
    """After editing, the source row is x*_0 of the inversion exactly, while the target row differs."""
    pipe, item, image = setup
    method = DirectInversionP2P(num_steps=5)
    inversion = method.invert(pipe, image, item.source_prompt, None)
    latents = method.edit_latents(pipe, inversion, item)
    x0 = pipe.encode_image(image)
    assert torch.equal(inversion.tensors["path"][-1:], x0)  # path[N−1] = x*_0, the encoded image
    assert torch.equal(latents[:1], x0)
    assert not torch.allclose(latents[1:], x0, atol=1e-3)


def test_negative_prompt_source_row_is_the_w1_reconstruction_for_any_w(setup):
    """With ∅ = c_src the source branch follows ε(c_src) alone: equal to a w = 1 DDIM sampling of the
    source prompt from x*_T, at w = 7.5 and at w = 2 alike."""
    pipe, item, image = setup
    method = NegativePromptP2P(num_steps=5)
    inversion = method.invert(pipe, image, item.source_prompt, None)
    pipe.scheduler.set_timesteps(5)
    cond = pipe.encode_prompts([item.source_prompt])
    reference = ddim_sampling_loop(pipe, inversion.tensors["x_T"], cond, cond, 1.0)
    scale = max(1.0, reference.abs().max().item())
    for w in (7.5, 2.0):
        source = dataclasses.replace(method, guidance_scale=w).edit_latents(pipe, inversion, item)[:1]
        assert (source - reference).abs().max().item() <= TOLERANCE * scale, w
    empty_null = InversionP2P(num_steps=5).edit_latents(pipe, inversion, item)  # ∅ = "": DDIM + P2P
    assert not torch.allclose(empty_null[1:], method.edit_latents(pipe, inversion, item)[1:], atol=1e-3)


def test_toy_reconstruction_beats_plain_ddim_at_w_7_5(tmp_path):
    """docs/methods.md toy-world sanity: target = source, 20 steps, 4 toy items (every 12th). Negative-prompt
    inversion beats DDIM (w = 7.5) on every item (measured 29.96 vs 22.32 dB mean, worst item margin
    5.0 dB); Direct Inversion on average (23.64 vs 22.32 dB; its target row is not corrected)."""
    from bench.data.preprocess import load_image_tensor
    from bench.data.toy_shapes import ToyShapes
    from bench.toyworld.evaluators import WEIGHTS_DIR
    from tests.conftest import SCHEDULER_OFFSET0

    pipe = load_pipeline({"name": "toy-sd", "path": str(WEIGHTS_DIR / "toy-sd"), "local_files_only": True,
                          "image_encoder": {"path": None, "subfolder": "image_encoder"}}, SCHEDULER_OFFSET0)
    suite = ToyShapes(str(tmp_path)).items()[::12][:4]
    items = [dataclasses.replace(item, target_prompt=item.source_prompt) for item in suite]
    methods = {"ddim": DDIM(num_steps=20, guidance_scale=7.5), "npi": NegativePromptP2P(num_steps=20),
               "di": DirectInversionP2P(num_steps=20)}
    scores = {name: [] for name in methods}
    for item in items:
        image, _ = load_image_tensor(item.image_path, pipe.resolution)
        for name, method in methods.items():
            edited = method.edit(pipe, method.invert(pipe, image, item.source_prompt, None), item, None)
            scores[name].append(float(psnr(edited, image[0])))
    assert all(n > d for n, d in zip(scores["npi"], scores["ddim"])), scores
    assert sum(scores["di"]) > sum(scores["ddim"]), scores
