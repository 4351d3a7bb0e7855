"""Model loading through the real from_pretrained path, the CLIP tokenizer, cost counters, schedulers."""

from __future__ import annotations

import pytest
import torch
from conftest import SCHEDULER_OFFSET0, SCHEDULER_OFFSET1

from bench.models import ModelNotFoundError, UNetCounter, build_scheduler, load_pipeline


def test_tiny_pipeline_reloads_with_from_pretrained(tiny_pipe, tiny_model_dir):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert (tiny_model_dir / "model_index.json").is_file()
    assert isinstance(tiny_pipe.unet, UNet2DConditionModel) and isinstance(tiny_pipe.vae, AutoencoderKL)
    assert isinstance(tiny_pipe.text_encoder, CLIPTextModel)
    assert (tiny_pipe.resolution, tiny_pipe.latent_size, tiny_pipe.vae_scale_factor) == (64, 16, 4)
    # the weights fingerprint is a content hash: same files → same fingerprint; it enters every key
    again = load_pipeline({"name": "tiny_random", "path": str(tiny_model_dir)}, SCHEDULER_OFFSET1)
    assert again.weights_fingerprint == tiny_pipe.weights_fingerprint


def test_tokenizer_is_the_real_clip_bpe(tiny_pipe):
    import open_clip

    reference = open_clip.get_tokenizer("ViT-B-32")  # open_clip's own CLIP tokenizer (independent code)
    for prompt in ["a photo of a horse in the mud", "a sculpture of a cat", "an embroidery of a penguin"]:
        ours = tiny_pipe.token_ids(prompt)
        theirs = [int(t) for t in reference([prompt])[0] if int(t) != 0]
        assert ours == theirs


def test_missing_weights_error_names_model_cache_and_prefetch_command():
    cfg = {"name": "CompVis/stable-diffusion-v1-4", "path": "CompVis/stable-diffusion-v1-4",
           "local_files_only": True, "prefetch": "bench weights fetch --model sd14"}
    with pytest.raises(ModelNotFoundError) as info:
        load_pipeline(cfg, SCHEDULER_OFFSET1)
    message = str(info.value)
    assert "CompVis/stable-diffusion-v1-4" in message
    assert "huggingface" in message.lower()  # the cache it searched
    assert "bench weights fetch --model sd14" in message


def test_unet_counter_counts_batches_and_backward(tiny_pipe):
    latents = torch.randn(3, 4, 16, 16)
    emb = tiny_pipe.encode_prompts(["a", "b", "c"])
    tiny_pipe.unet_eps(latents, 10, emb)
    tiny_pipe.unet_eps(latents[:1], 10, emb[:1])
    learned = emb[:1].clone().requires_grad_(True)
    tiny_pipe.unet_eps(latents[:1], 10, learned).sum().backward()
    snap = tiny_pipe.counter.snapshot()
    assert snap["forward_calls_by_batch"] == {"1": 2, "3": 1} and snap["nfe"] == 5
    assert snap["backward_calls_by_batch"] == {"1": 1} and snap["nfe_backward"] == 1


def test_counter_since_reports_only_new_calls():
    counter = UNetCounter()
    counter.forward_calls.update([2, 2])
    before = counter.snapshot()
    counter.forward_calls.update([2, 1])
    assert counter.since(before) == {"nfe": 3, "nfe_backward": 0, "forward_calls_by_batch": {"1": 1, "2": 1},
                                     "backward_calls_by_batch": {}}


def test_scheduler_grids_follow_steps_offset():
    offset1, offset0 = build_scheduler(SCHEDULER_OFFSET1), build_scheduler(SCHEDULER_OFFSET0)
    offset1.set_timesteps(100)
    offset0.set_timesteps(50)
    assert offset1.timesteps[0] == 991 and offset1.timesteps[-1] == 1  # EF-DDPM grid
    assert offset0.timesteps[0] == 980 and offset0.timesteps[-1] == 0  # P2P/NTI grid
    assert float(offset0.final_alpha_cumprod) == pytest.approx(float(offset0.alphas_cumprod[0]))
    with pytest.raises(ValueError, match="unknown keys"):
        build_scheduler({**SCHEDULER_OFFSET1, "num_steps": 3})
