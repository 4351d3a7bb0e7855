"""An SD-v1.4-shaped pipeline with random weights, built in code (``bench perf --model sd14_random``,
``model=sd14_random``).

Same architecture, parameter counts and FLOPs as CompVis/stable-diffusion-v1-4, no download:
- UNet2DConditionModel: sample 64 (512² images), block_out_channels 320/640/1280/1280, 3 cross-attention
  down blocks + 1 plain, layers_per_block 2, cross_attention_dim 768, 8 heads (``attention_head_dim=8``,
  the legacy name for the head count), 32 norm groups — 859,520,964 parameters;
- CLIP text encoder with the ViT-L/14 text tower's shape (12 layers, hidden 768, 12 heads, MLP 3072,
  quick_gelu, 77 positions) — 123,060,480 parameters — and the real CLIP BPE tokenizer
  (``bench.tiny_random.write_clip_tokenizer``);
- AutoencoderKL 128/256/512/512, 2 layers per block, 4 latent channels, scaling factor 0.18215 —
  83,653,863 parameters;
- a CLIP ViT-B/16-shaped vision tower (StyleDiffusion's image encoder), built on first use.

Two ways in: ``build_sd14_random_pipeline`` builds the modules directly on the target device (``bench
perf``: no disk round trip of 4.6 GB of fp32 weights); ``build_sd14_random`` saves them once in diffusers
format so that ``model=sd14_random`` loads them through ``bench.models.load_pipeline``'s
``from_pretrained`` path, exactly as ``model=sd14``. ``NARROW`` is the same geometry (64² latents, VAE
factor 8, 4 UNet levels with cross-attention at 64², 32², 16², 77 text tokens) at a fraction of the
width, for CPU tests (``build_sd14_narrow_random``).

Random weights make the outputs meaningless, not the cost or the tensor shapes.
"""

from __future__ import annotations

from pathlib import Path

import torch

SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)
SD14_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, sample_size=512, block_out_channels=(128, 256, 512, 512),
    layers_per_block=2, norm_num_groups=32, act_fn="silu", down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, scaling_factor=0.18215,
)
CLIP_L14_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, bos_token_id=49406,
    eos_token_id=49407, pad_token_id=49407,
)
CLIP_B16_VISION = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                       image_size=224, patch_size=16, projection_dim=512, hidden_act="quick_gelu")
SD14 = {"unet": SD14_UNET, "vae": SD14_VAE, "text_encoder": CLIP_L14_TEXT, "image_encoder": CLIP_B16_VISION}
# SD v1.4's geometry (UNet levels, layers per block, cross-attention at 64², 32², 16²; 64² latents, VAE ×8,
# 77 tokens) at a fraction of the width and 2 heads: about a second per UNet call + VAE decode on one CPU
# core. The attention at 64² (4096 tokens) is the cost that stays.
NARROW = {
    "unet": {**SD14_UNET, "block_out_channels": (16, 32, 32, 32), "cross_attention_dim": 64, "attention_head_dim": 2,
             "norm_num_groups": 8},
    "vae": {**SD14_VAE, "block_out_channels": (8, 16, 32, 32), "norm_num_groups": 8},
    "text_encoder": {**CLIP_L14_TEXT, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 4, "projection_dim": 64},
    "image_encoder": {**CLIP_B16_VISION, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                      "num_attention_heads": 4, "projection_dim": 32},
}
# parameter counts of the real SD v1.4 components (diffusers format), for the shape check in the tests
SD14_PARAMETERS = {"unet": 859_520_964, "text_encoder": 123_060_480, "vae": 83_653_863}
MODEL_ID = "sd14_random"


def build_modules(device: str | torch.device = "cpu", seed: int = 0, shapes: dict = SD14) -> dict[str, torch.nn.Module]:
    """UNet, VAE and text encoder with ``shapes`` (default SD v1.4's; random init, fp32) on ``device``
    (``"meta"`` builds them without allocating weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    modules = {}
    with torch.device(device):
        torch.manual_seed(seed)
        modules["unet"] = UNet2DConditionModel(**shapes["unet"])
        torch.manual_seed(seed)
        modules["vae"] = AutoencoderKL(**shapes["vae"])
        torch.manual_seed(seed)
        modules["text_encoder"] = CLIPTextModel(CLIPTextConfig(**shapes["text_encoder"]))
    return modules


def build_image_encoder(device: str | torch.device = "cpu", seed: int = 0, shapes: dict = SD14):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device(device):
        torch.manual_seed(seed)
        return CLIPVisionModel(CLIPVisionConfig(**shapes["image_encoder"]))


def build_sd14_random_pipeline(scheduler_cfg: dict, device: str = "cpu", dtype: str = "float32", seed: int = 0):
    """An ``EditPipeline`` over the SD-v1.4-shaped random modules, built in memory (``bench perf``)."""
    from bench.models import EditPipeline, build_scheduler, resolve_device, resolve_dtype
    from bench.tiny_random import clip_tokenizer

    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    modules = build_modules(torch_device, seed)
    for module in modules.values():
        if torch_dtype != torch.float32:  # built in fp32
            module.to(dtype=torch_dtype)
        module.eval().requires_grad_(False)

    def image_encoder_loader():
        return build_image_encoder(torch_device, seed).eval().requires_grad_(False)

    return EditPipeline(unet=modules["unet"], vae=modules["vae"], text_encoder=modules["text_encoder"],
                        tokenizer=clip_tokenizer(), scheduler=build_scheduler(dict(scheduler_cfg)),
                        device=torch_device, dtype=torch_dtype, model_id=MODEL_ID,
                        weights_fingerprint=f"random-seed{seed}", image_encoder_loader=image_encoder_loader)


def build_sd14_random(path: str | Path, seed: int = 0, shapes: dict = SD14) -> Path:
    """``model.build`` of ``model=sd14_random``: the random modules saved in diffusers format at ``path``
    (fp32 safetensors, ~4.6 GB with the image encoder; built once, then loaded with ``from_pretrained``)."""
    from bench.tiny_random import clip_tokenizer, save_pipeline

    parts = build_modules("cpu", seed, shapes)
    return save_pipeline(path, {**parts, "tokenizer": clip_tokenizer()}, build_image_encoder("cpu", seed, shapes))


def build_sd14_narrow_random(path: str | Path, seed: int = 0) -> Path:
    """``build_sd14_random`` at the ``NARROW`` widths (tests: ``model.build=bench.perf.sd_shaped:build_sd14_narrow_random``)."""
    return build_sd14_random(path, seed, NARROW)
