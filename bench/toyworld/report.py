"""Quality report of the toy weights (what MODEL_CARD.md quotes): ``bench toy report``.

- evaluators: zero-shot attribute accuracy of the open_clip toy CLIP on held-out renders (argmax over
  the 320 captions), and the toy ViT's own attribute head on the same renders;
- vae: reconstruction PSNR of the pipeline's VAE on held-out renders (fp16 files loaded as fp32);
- generator: ``samples`` DDIM samples (``sample_steps`` steps, guidance ``cfg``) of random captions,
  judged by the evaluator CLIP; optionally a grid PNG of the first 128;
- gen_clip: zero-shot accuracy of the generator's own CLIP (needs the clip stage export in --out).
"""

from __future__ import annotations

import time
from pathlib import Path

import torch

from bench.images import psnr
from bench.toyworld import evaluators as ev
from bench.toyworld.train.common import TrainConfig, export_dir, heldout
from bench.toyworld.train.unet import quality_unet


def quality_report(cfg: TrainConfig, parts=("evaluators", "vae", "generator"), grid: Path | None = None) -> dict:
    report: dict = {"seed": cfg.seed, "heldout_renders": cfg.eval_size}
    evaluators_dir = cfg.weights / "evaluators"
    if "evaluators" in parts or "vae" in parts:
        images, labels = heldout(cfg)
    if "evaluators" in parts:
        report["toy_clip_zero_shot"] = ev.attribute_accuracy(ev.load_clip_classifier(evaluators_dir).classify(images),
                                                             labels)
        vit = ev.load_vit(evaluators_dir)
        with torch.no_grad():
            logits = torch.cat([vit(ev.vit_pixels(images[i:i + 256])) for i in range(0, len(images), 256)])
        from bench.toyworld.train.evaluators import attribute_predict

        report["toy_vit_head"] = ev.attribute_accuracy(attribute_predict(logits), labels)
    if "vae" in parts:
        from diffusers import AutoencoderKL

        vae = AutoencoderKL.from_pretrained(cfg.weights / "toy-sd" / "vae", torch_dtype=torch.float32).eval()
        with torch.no_grad():
            recon = torch.cat([vae.decode(vae.encode(images[i:i + 128]).latent_dist.mean).sample.clamp(-1, 1)
                               for i in range(0, len(images), 128)])
        report["vae_psnr_db"] = float(psnr(recon, images).mean())
    if "gen_clip" in parts:
        from transformers import CLIPModel, CLIPTokenizer

        from bench.toyworld.train.gen_clip import quality_gen_clip

        model = CLIPModel.from_pretrained(export_dir(cfg, "clip") / "clip_full").eval()
        tokenizer = CLIPTokenizer.from_pretrained(export_dir(cfg, "clip") / "tokenizer")
        report["gen_clip_zero_shot"] = quality_gen_clip(cfg, model, tokenizer)
    if "generator" in parts:
        t0 = time.time()
        report["generator_samples"] = quality_unet(cfg, grid_path=grid)
        report["generator_samples"]["wall_s"] = round(time.time() - t0, 1)
    return report
