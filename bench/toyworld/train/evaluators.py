"""Stages ``eval_clip`` / ``eval_vit`` / ``eval_alex``: the evaluator backbones."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from bench.io import atomic_path, write_json
from bench.toyworld import evaluators as ev
from bench.toyworld.generator import all_captions
from bench.toyworld.train.common import (
    POOL_EVALUATOR,
    TrainConfig,
    augment,
    heldout,
    make_pool,
    to_tensor,
    train_loop,
    warmup_lr,
)
from bench.toyworld.train.gen_clip import caption_labels, contrastive_loss

# ----------------------------------------------------------------------------------------------
# evaluator stages


def _eval_batch(pool, idx, gen) -> tuple[torch.Tensor, torch.Tensor]:
    return augment(to_tensor(pool["images"][idx]), gen), torch.from_numpy(pool["labels"][idx])


def attribute_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(logits[:, s], labels[:, k]) for k, s in enumerate(ev.ATTRIBUTE_SLICES.values()))


def attribute_predict(logits: torch.Tensor) -> torch.Tensor:
    return torch.stack([logits[:, s].argmax(1) for s in ev.ATTRIBUTE_SLICES.values()], dim=1)


def save_safetensors(state: dict[str, torch.Tensor], path: Path, fp16: bool) -> None:
    from safetensors.torch import save_file

    dtype = torch.float16 if fp16 else torch.float32
    state = {k: v.detach().to(dtype).contiguous() if v.is_floating_point() else v.contiguous()
             for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(state, tmp)


def train_eval_clip(cfg: TrainConfig) -> dict:
    pool = make_pool(cfg, POOL_EVALUATOR)
    torch.manual_seed(cfg.seed)
    model = ev.build_clip()
    tokens = ev.clip_tokenizer()(all_captions())
    batch = cfg.batch["eval_clip"]

    def loss_fn(step, gen):
        idx = torch.randint(0, len(pool["images"]), (batch,), generator=gen).numpy()
        images, labels = _eval_batch(pool, idx, gen)
        return contrastive_loss(model.encode_image(ev.clip_pixels(images)), model.encode_text(tokens),
                                caption_labels(labels.numpy()), model.logit_scale)

    base = cfg.lr["eval_clip"]
    info = train_loop(cfg, "eval_clip", {"model": model}, model.parameters(), loss_fn,
                      lambda s: warmup_lr(base, s, total=cfg.steps["eval_clip"]))
    model.eval()
    _export_evaluator(cfg, model.state_dict(), ev.CLIP_NAME, ev.CLIP_CONFIG)
    info["quality"] = quality_eval_clip(cfg)
    return info


def quality_eval_clip(cfg: TrainConfig) -> dict:
    images, labels = heldout(cfg)
    return ev.attribute_accuracy(ev.load_clip_classifier(cfg.weights / "evaluators").classify(images), labels)


def _train_classifier(cfg: TrainConfig, stage: str, model: torch.nn.Module, pixels) -> dict:
    pool = make_pool(cfg, POOL_EVALUATOR)
    batch = cfg.batch[stage]

    def loss_fn(step, gen):
        idx = torch.randint(0, len(pool["images"]), (batch,), generator=gen).numpy()
        images, labels = _eval_batch(pool, idx, gen)
        logits = model(pixels(images))
        acc = float((attribute_predict(logits.detach()) == labels).all(1).float().mean())
        return attribute_ce(logits, labels), {"acc": acc}

    base = cfg.lr[stage]
    info = train_loop(cfg, stage, {"model": model}, model.parameters(), loss_fn,
                      lambda s: warmup_lr(base, s, total=cfg.steps[stage]))
    model.eval()
    images, labels = heldout(cfg)
    with torch.no_grad():
        logits = torch.cat([model(pixels(images[i:i + 256])) for i in range(0, len(images), 256)])
    info["quality_trained_head"] = ev.attribute_accuracy(attribute_predict(logits), labels)
    return info


def _export_evaluator(cfg: TrainConfig, state: dict[str, torch.Tensor], name: str, spec: dict | None = None) -> None:
    out = cfg.weights / "evaluators"
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, out / f"{name}.safetensors", cfg.fp16)
    if spec is not None:
        write_json(out / f"{name}.json", spec)


def train_eval_vit(cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    model = ev.build_vit()
    info = _train_classifier(cfg, "eval_vit", model, ev.vit_pixels)
    _export_evaluator(cfg, model.state_dict(), "toy-vit", ev.VIT_KWARGS)
    return info


def train_eval_alex(cfg: TrainConfig) -> dict:
    torch.manual_seed(cfg.seed)
    model = ev.AlexAttributeNet()
    info = _train_classifier(cfg, "eval_alex", model, ev.lpips_pixels)
    _export_evaluator(cfg, model.features_state_dict(), "toy-alexnet")
    return info
