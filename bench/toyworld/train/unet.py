"""Stage ``unet``: the denoiser on frozen latents/text states, pipeline export, samples and quality."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from bench.io import atomic_path, write_json
from bench.toyworld import evaluators as ev
from bench.toyworld.generator import all_captions, rng_from
from bench.toyworld.train.common import (
    HELDOUT,
    POOL_GENERATOR,
    SD_BETAS,
    Checkpoint,
    TrainConfig,
    export_dir,
    finish_export,
    make_pool,
    staging_dir,
    to_tensor,
    train_loop,
    warmup_lr,
)
from bench.toyworld.train.gen_clip import caption_labels, gen_clip_classifier
from bench.toyworld.train.vae import final_vae_dir

# ----------------------------------------------------------------------------------------------
# stage: UNet


def build_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64, 64),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=128, attention_head_dim=2, norm_num_groups=16,
    )


def load_generator_parts(cfg: TrainConfig):
    """Frozen text encoder, tokenizer and VAE from the clip / vae stage exports."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    clip_dir, vae_dir = export_dir(cfg, "clip"), export_dir(cfg, "vae")
    for path, stage in ((clip_dir, "clip"), (vae_dir, "vae")):
        if not path.is_dir():
            raise FileNotFoundError(f"the unet stage needs the '{stage}' stage first: {path} is missing "
                                    f"(run `bench toy train --stage {stage}` with the same --out)")
    text = CLIPTextModel.from_pretrained(clip_dir / "text_encoder").eval().requires_grad_(False)
    tokenizer = CLIPTokenizer.from_pretrained(clip_dir / "tokenizer")
    vae = AutoencoderKL.from_pretrained(vae_dir / "vae").eval().requires_grad_(False)
    return text, tokenizer, vae


@torch.no_grad()
def text_table(text, tokenizer) -> torch.Tensor:
    """(321, 77, D): hidden states of every caption (index order) and, last, of the empty prompt,
    padded to 77 tokens exactly as ``EditPipeline.encode_prompts`` does."""
    prompts = all_captions() + [""]
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    return torch.cat([text(ids[i:i + 64])[0] for i in range(0, len(prompts), 64)])


@torch.no_grad()
def pool_latents(cfg: TrainConfig, vae, pool) -> torch.Tensor:
    """Scaled VAE latents (posterior means) of the generator pool, cached beside the checkpoints."""
    from bench.fingerprint import fingerprint_dir

    path = cfg.out / "unet" / f"latents-{fingerprint_dir(export_dir(cfg, 'vae'))}-{len(pool['images'])}.pt"
    if path.is_file():
        return torch.load(path)
    chunks = []
    for i in tqdm(range(0, len(pool["images"]), 256), desc="encode pool", disable=cfg.quiet):
        chunks.append(vae.encode(to_tensor(pool["images"][i:i + 256])).latent_dist.mean * vae.config.scaling_factor)
    latents = torch.cat(chunks).half()
    with atomic_path(path) as tmp:
        torch.save(latents, tmp)
    return latents


def train_unet(cfg: TrainConfig) -> dict:
    import copy

    from diffusers import DDPMScheduler

    text, tokenizer, vae = load_generator_parts(cfg)
    pool = make_pool(cfg, POOL_GENERATOR)
    latents = pool_latents(cfg, vae, pool)
    table = text_table(text, tokenizer)
    captions = caption_labels(pool["labels"])
    empty = table.shape[0] - 1
    alphas = DDPMScheduler(**SD_BETAS).alphas_cumprod
    torch.manual_seed(cfg.seed)
    unet = build_unet()
    init = cfg.out / "unet" / "init_from_weights.safetensors"
    if init.is_file() and Checkpoint(cfg, "unet").load() is None:  # continue from committed weights
        from safetensors.torch import load_file

        unet.load_state_dict({k: v.float() for k, v in load_file(init).items()})
    ema_unet = copy.deepcopy(unet).requires_grad_(False)
    batch = cfg.batch["unet"]

    def loss_fn(step, gen):
        idx = torch.randint(0, len(latents), (batch,), generator=gen)
        x0 = latents[idx].float()
        cond = torch.where(torch.rand(batch, generator=gen) < cfg.caption_dropout, empty, captions[idx])
        t = torch.randint(0, SD_BETAS["num_train_timesteps"], (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        a = alphas[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        eps = unet(xt, t, encoder_hidden_states=table[cond]).sample
        snr = alphas[t] / (1 - alphas[t])
        weight = snr.clamp(max=5.0) / snr  # min-SNR-5 for ε-prediction
        loss = (weight * ((eps - noise) ** 2).flatten(1).mean(1)).mean()
        return loss, {}

    base = cfg.lr["unet"]
    info = train_loop(cfg, "unet", {"unet": unet}, unet.parameters(), loss_fn, lambda s: warmup_lr(base, s, 200),
                      ema={"unet": ema_unet}, ema_decay=cfg.ema_decay)
    ema_unet.eval()
    from diffusers import AutoencoderKL

    export_pipeline(cfg, ema_unet, text, tokenizer, AutoencoderKL.from_pretrained(final_vae_dir(cfg)).eval(), info["step"])
    return info


def sd_ddim_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def export_pipeline(cfg: TrainConfig, unet, text, tokenizer, vae, unet_steps: int) -> Path:
    """Assemble the SD pipeline folder <weights>/toy-sd (fp16 files when cfg.fp16)."""
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor, CLIPVisionModel

    from bench.toyworld.tokenizer import write_toy_tokenizer

    final = cfg.weights / "toy-sd"
    staging = staging_dir(final)
    dtype = torch.float16 if cfg.fp16 else torch.float32
    pipe = StableDiffusionPipeline(vae=copy_to(vae, dtype), text_encoder=copy_to(text, dtype), tokenizer=tokenizer,
                                   unet=copy_to(unet, dtype), scheduler=sd_ddim_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(staging, safe_serialization=True)
    write_toy_tokenizer(staging / "tokenizer")  # keep vocab.json / merges.txt beside tokenizer.json
    clip_dir = export_dir(cfg, "clip") / "image_encoder"
    vision = CLIPVisionModel.from_pretrained(clip_dir)
    copy_to(vision, dtype).save_pretrained(staging / "image_encoder", safe_serialization=True)
    CLIPImageProcessor.from_pretrained(clip_dir).save_pretrained(staging / "image_encoder")
    write_json(staging / "training_state.json", {"seed": cfg.seed, "unet_steps": unet_steps,
                                                  "dtype": str(dtype).replace("torch.", "")})
    finish_export(staging, final)
    return final


def copy_to(module, dtype):
    import copy

    return copy.deepcopy(module).to(dtype)


@torch.no_grad()
def sample(unet, vae, table: torch.Tensor, caption_ids: torch.Tensor, *, steps: int, cfg_scale: float,
           seed: int, batch: int = 64) -> torch.Tensor:
    """DDIM (η=0) text-to-image samples with classifier-free guidance: [-1, 1] images (N, 3, 64, 64)."""
    out = []
    for start in range(0, len(caption_ids), batch):
        ids = caption_ids[start:start + batch]
        scheduler = sd_ddim_scheduler()
        scheduler.set_timesteps(steps)
        gen = torch.Generator().manual_seed(seed + start)
        x = torch.randn((len(ids), 4, 16, 16), generator=gen)
        cond = torch.cat([table[-1:].expand(len(ids), -1, -1), table[ids]])
        for t in scheduler.timesteps:
            eps_u, eps_c = unet(torch.cat([x, x]), t, encoder_hidden_states=cond).sample.chunk(2)
            x = scheduler.step(eps_u + cfg_scale * (eps_c - eps_u), t, x).prev_sample
        out.append(vae.decode(x / vae.config.scaling_factor).sample.clamp(-1, 1))
    return torch.cat(out)


def image_grid(images: torch.Tensor, cols: int = 16) -> np.ndarray:
    """[-1, 1] images (N, 3, H, W) → uint8 grid (rows·H, cols·W, 3)."""
    n, _, h, w = images.shape
    rows = math.ceil(n / cols)
    canvas = torch.ones(rows * cols, 3, h, w)
    canvas[:n] = images
    arr = ((canvas + 1) * 127.5).round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()
    return arr.reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)


def quality_unet(cfg: TrainConfig, pipeline_dir: Path | None = None, grid_path: Path | None = None) -> dict:
    """Generate ``cfg.samples`` images (balanced random captions) from the exported pipeline, classify
    them with the evaluator CLIP, report attribute accuracy."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    pipeline_dir = Path(pipeline_dir or cfg.weights / "toy-sd")
    unet = UNet2DConditionModel.from_pretrained(pipeline_dir / "unet", torch_dtype=torch.float32).eval()
    vae = AutoencoderKL.from_pretrained(pipeline_dir / "vae", torch_dtype=torch.float32).eval()
    text = CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder", torch_dtype=torch.float32).eval()
    tokenizer = CLIPTokenizer.from_pretrained(pipeline_dir / "tokenizer")
    table = text_table(text, tokenizer)
    rng = rng_from((cfg.seed, HELDOUT, 1))
    ids = torch.from_numpy(rng.integers(0, len(all_captions()), cfg.samples))
    images = sample(unet, vae, table, ids, steps=cfg.sample_steps, cfg_scale=cfg.cfg_scale, seed=cfg.seed)
    from bench.toyworld.generator import caption_attributes

    truth = torch.stack(caption_attributes(ids), dim=1)
    try:
        classifier = ev.load_clip_classifier(cfg.weights / "evaluators")
        judge = "evaluator toy-clip"
    except FileNotFoundError:
        from transformers import CLIPModel

        classifier = gen_clip_classifier(CLIPModel.from_pretrained(export_dir(cfg, "clip") / "clip_full").eval(),
                                         tokenizer)
        judge = "generator CLIP (evaluator not trained yet)"
    result = ev.attribute_accuracy(classifier.classify(images), truth)
    result.update({"judge": judge, "samples": cfg.samples, "ddim_steps": cfg.sample_steps, "cfg": cfg.cfg_scale})
    if grid_path is not None:
        from PIL import Image

        Path(grid_path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image_grid(images[:128])).save(grid_path)
    return result
