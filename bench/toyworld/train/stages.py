"""The stage table and ``run``: what ``bench toy train --stage`` calls."""

from __future__ import annotations

import json
import shutil
import time

import torch

from bench.io import write_json
from bench.toyworld.train.common import STAGE_GROUPS, Checkpoint, TrainConfig, export_dir, finish_export, staging_dir
from bench.toyworld.train.evaluators import save_safetensors, train_eval_alex, train_eval_clip, train_eval_vit
from bench.toyworld.train.gen_clip import train_gen_clip
from bench.toyworld.train.unet import train_unet
from bench.toyworld.train.vae import train_vae, train_vae_decoder

TRAINERS = {"clip": train_gen_clip, "vae": train_vae, "vae_decoder": train_vae_decoder, "unet": train_unet, "eval_clip": train_eval_clip,
            "eval_vit": train_eval_vit, "eval_alex": train_eval_alex}


def seed_from_weights(cfg: TrainConfig) -> None:
    """Continue from the committed weights when ``--out`` has no checkpoints: the clip and vae stage
    exports are taken from <weights>/toy-sd and the UNet starts from its committed (EMA) weights."""
    pipeline = cfg.weights / "toy-sd"
    if not (pipeline / "model_index.json").is_file():
        raise FileNotFoundError(f"--from-weights: no committed pipeline at {pipeline}")
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPVisionModel

    clip_export, vae_export = export_dir(cfg, "clip"), export_dir(cfg, "vae")
    if not clip_export.exists():
        staging = staging_dir(clip_export)
        CLIPTextModel.from_pretrained(pipeline / "text_encoder", torch_dtype=torch.float32).save_pretrained(
            staging / "text_encoder")
        CLIPVisionModel.from_pretrained(pipeline / "image_encoder", torch_dtype=torch.float32).save_pretrained(
            staging / "image_encoder")
        shutil.copy(pipeline / "image_encoder" / "preprocessor_config.json", staging / "image_encoder")
        shutil.copytree(pipeline / "tokenizer", staging / "tokenizer")
        finish_export(staging, clip_export)
    if not vae_export.exists():
        staging = staging_dir(vae_export)
        AutoencoderKL.from_pretrained(pipeline / "vae", torch_dtype=torch.float32).save_pretrained(staging / "vae")
        finish_export(staging, vae_export)
    state = json.loads((pipeline / "training_state.json").read_text())
    init = cfg.out / "unet" / "init_from_weights.safetensors"
    if Checkpoint(cfg, "unet").load() is None and not init.is_file():
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(pipeline / "unet", torch_dtype=torch.float32)
        save_safetensors(unet.state_dict(), init, fp16=False)
        print(f"[toy] continuing the UNet from the committed weights (trained {state['unet_steps']} steps); "
              "the optimizer state starts fresh")


def run(cfg: TrainConfig, stage: str, from_weights: bool = False) -> dict:
    """Run the stages of ``stage`` (a name or group) in order; returns and prints the quality report."""
    if stage not in STAGE_GROUPS:
        raise ValueError(f"--stage {stage!r}: expected one of {sorted(STAGE_GROUPS)}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    if from_weights:
        seed_from_weights(cfg)
    report = {}
    for name in STAGE_GROUPS[stage]:
        if from_weights and name in ("clip", "vae", "vae_decoder") and Checkpoint(cfg, name).load() is None:
            continue  # the committed pipeline's text encoder / VAE are used as they are
        t0 = time.time()
        info = TRAINERS[name](cfg)
        info["wall_s"] = round(time.time() - t0, 1)
        report[name] = info
        write_json(cfg.out / name / "report.json", info)
        print(f"[toy] {name}: {json.dumps(info)}", flush=True)
    return report
