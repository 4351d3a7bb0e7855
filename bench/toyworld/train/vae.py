"""Stages ``vae`` and ``vae_decoder``: the AutoencoderKL and its decoder fine-tune."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from bench.images import psnr
from bench.toyworld.train.common import (
    POOL_GENERATOR,
    TrainConfig,
    export_dir,
    finish_export,
    heldout,
    make_pool,
    staging_dir,
    to_tensor,
    train_loop,
    warmup_lr,
)

# ----------------------------------------------------------------------------------------------
# stage: VAE


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=64, block_out_channels=(16, 32, 64),
        # 4 groups: with 16 groups on the 16-channel full-resolution blocks every GroupNorm is an
        # instance norm, which removes each image's absolute colour (measured: 16.8 dB after 500 steps)
        layers_per_block=1, norm_num_groups=4, down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3, scaling_factor=1.0,
    )


def train_vae(cfg: TrainConfig) -> dict:
    pool = make_pool(cfg, POOL_GENERATOR)
    torch.manual_seed(cfg.seed)
    vae = build_vae()
    batch = cfg.batch["vae"]

    def loss_fn(step, gen):
        idx = torch.randint(0, len(pool["images"]), (batch,), generator=gen).numpy()
        x = to_tensor(pool["images"][idx])
        # decode the posterior mean (what EditPipeline.encode_image uses): sampling with the initial
        # std of 1 slowed convergence several-fold on CPU budgets; the tiny KL term only keeps the
        # latents bounded
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.mean).sample
        rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
        kl = posterior.kl().mean() / x[0].numel()
        return rec + 1e-4 * kl, {"psnr": float(psnr(recon.detach().clamp(-1, 1), x).mean())}

    base = cfg.lr["vae"]
    info = train_loop(cfg, "vae", {"vae": vae}, vae.parameters(), loss_fn,
                      lambda s: warmup_lr(base, s, total=cfg.steps["vae"]))
    vae.eval()
    # latent scaling so that scaled latents have unit std (SD's 0.18215 plays the same role)
    with torch.no_grad():
        sample = to_tensor(pool["images"][:1024])
        latents = torch.cat([vae.encode(sample[i:i + 256]).latent_dist.mean for i in range(0, len(sample), 256)])
    vae.register_to_config(scaling_factor=round(float(1.0 / latents.std()), 5))
    return _export_vae(cfg, "vae", vae, info)


def _export_vae(cfg: TrainConfig, stage: str, vae, info: dict) -> dict:
    final = export_dir(cfg, stage)
    staging = staging_dir(final)
    vae.save_pretrained(staging / "vae", safe_serialization=True)
    finish_export(staging, final)
    info["quality"] = quality_vae(cfg, vae)
    return info


def train_vae_decoder(cfg: TrainConfig) -> dict:
    """Fine-tune only the VAE decoder (encoder, latent space and scaling factor frozen), so the UNet
    can train on the final latents while the decoder still improves."""
    from diffusers import AutoencoderKL

    source = export_dir(cfg, "vae") / "vae"
    if not source.is_dir():
        raise FileNotFoundError(f"the vae_decoder stage needs the 'vae' stage first: {source} is missing")
    pool = make_pool(cfg, POOL_GENERATOR)
    vae = AutoencoderKL.from_pretrained(source).requires_grad_(False)
    decoder = [vae.post_quant_conv, vae.decoder]
    for module in decoder:
        module.requires_grad_(True)
    batch = cfg.batch["vae_decoder"]

    def loss_fn(step, gen):
        idx = torch.randint(0, len(pool["images"]), (batch,), generator=gen).numpy()
        x = to_tensor(pool["images"][idx])
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
        # small latent noise: decoded diffusion samples are never exactly encoder outputs
        recon = vae.decode(z + 0.05 * torch.randn(z.shape, generator=gen)).sample
        return F.l1_loss(recon, x) + F.mse_loss(recon, x), {"psnr": float(psnr(recon.detach().clamp(-1, 1), x).mean())}

    base = cfg.lr["vae_decoder"]
    params = [p for module in decoder for p in module.parameters()]
    info = train_loop(cfg, "vae_decoder", {"vae": vae}, params, loss_fn,
                      lambda s: warmup_lr(base, s, total=cfg.steps["vae_decoder"]))
    vae.eval()
    return _export_vae(cfg, "vae_decoder", vae, info)


def final_vae_dir(cfg: TrainConfig) -> Path:
    """The VAE that goes into the pipeline: the decoder-tuned one when that stage ran."""
    tuned = export_dir(cfg, "vae_decoder") / "vae"
    return tuned if tuned.is_dir() else export_dir(cfg, "vae") / "vae"


@torch.no_grad()
def quality_vae(cfg: TrainConfig, vae, fp16_roundtrip: bool = True) -> dict:
    images, _ = heldout(cfg, min(cfg.eval_size, 512))
    out = {}
    variants = {"fp32": vae}
    if fp16_roundtrip:  # what load_pipeline gets from fp16 files (upcast to fp32)
        import copy

        half = copy.deepcopy(vae)
        for p in half.parameters():
            p.data = p.data.half().float()
        variants["fp16_weights"] = half
    for name, model in variants.items():
        recon = torch.cat([model.decode(model.encode(images[i:i + 128]).latent_dist.mean).sample.clamp(-1, 1)
                           for i in range(0, len(images), 128)])
        out[f"psnr_{name}"] = float(psnr(recon, images).mean())
    out["scaling_factor"] = float(vae.config.scaling_factor)
    return out
