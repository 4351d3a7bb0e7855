"""Shared training machinery: config, deterministic data pools, checkpoints, the loop, exports."""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from bench.io import atomic_path
from bench.toyworld.evaluators import WEIGHTS_DIR
from bench.toyworld.generator import render, sample_scenes

GENERATOR_STAGES = ("clip", "vae", "vae_decoder", "unet")
EVALUATOR_STAGES = ("eval_clip", "eval_vit", "eval_alex")
STAGES = GENERATOR_STAGES + EVALUATOR_STAGES
STAGE_GROUPS = {"all": STAGES, "generator": GENERATOR_STAGES, "evaluators": EVALUATOR_STAGES,
                **{s: (s,) for s in STAGES}}
# seed namespace per stage (fixed numbers: adding a stage must not change the others' batches)
STAGE_IDS = {"clip": 0, "vae": 1, "unet": 2, "eval_clip": 3, "eval_vit": 4, "eval_alex": 5, "vae_decoder": 6}
# seed namespaces of the render pools (disjoint from each other and from the held-out suites)
POOL_GENERATOR, POOL_EVALUATOR, HELDOUT = 10, 11, 12
DEFAULT_STEPS = {"clip": 150, "vae": 3000, "vae_decoder": 1500, "unet": 16000, "eval_clip": 1500, "eval_vit": 800,
                 "eval_alex": 800}
DEFAULT_BATCH = {"clip": 64, "vae": 16, "vae_decoder": 16, "unet": 32, "eval_clip": 64, "eval_vit": 64,
                 "eval_alex": 64}
DEFAULT_LR = {"clip": 1e-3, "vae": 1e-3, "vae_decoder": 2e-4, "unet": 8e-4, "eval_clip": 1e-3, "eval_vit": 5e-4,
              "eval_alex": 3e-4}
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


@dataclass
class TrainConfig:
    out: Path  # checkpoints, pools, logs (git-ignored)
    weights: Path = WEIGHTS_DIR  # final exports: <weights>/toy-sd, <weights>/evaluators
    seed: int = 0
    steps: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_STEPS))
    batch: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_BATCH))
    lr: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LR))
    pool_size: int = 16384  # renders per pool (generator pool, evaluator pool)
    ckpt_every: int = 50
    eval_size: int = 2000  # held-out renders for the quality report
    samples: int = 256  # generated samples for the UNet quality report
    sample_steps: int = 50
    cfg_scale: float = 5.0
    ema_decay: float = 0.995
    caption_dropout: float = 0.1
    fp16: bool = True  # export weights in fp16
    max_minutes: float | None = None  # stop a stage (after a checkpoint) when this wall time is reached
    quiet: bool = False

    def __post_init__(self):
        self.out, self.weights = Path(self.out), Path(self.weights)


# ----------------------------------------------------------------------------------------------
# helpers


def step_seed(seed: int, stage: str, step: int) -> int:
    """A 63-bit seed for (seed, stage, step): batches and noise of a step depend on nothing else."""
    return int(np.random.SeedSequence([seed, STAGE_IDS[stage], step]).generate_state(2, np.uint64)[0] >> np.uint64(1))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 64, 64, 3) → float (N, 3, 64, 64) in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def make_pool(cfg: TrainConfig, namespace: int, size: int | None = None) -> dict[str, np.ndarray]:
    """A pool of renders (uint8 images + attribute indices), cached under ``cfg.out``."""
    size = size or cfg.pool_size
    path = cfg.out / f"pool-{namespace}-{cfg.seed}-{size}.npz"
    if path.is_file():
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    chunk, parts = 1024, []
    for start in tqdm(range(0, size, chunk), desc=f"render pool {namespace}", disable=cfg.quiet):
        scenes = sample_scenes((cfg.seed, namespace, start), min(chunk, size - start))
        parts.append((render(scenes), scenes.colour, scenes.shape, scenes.background))
    pool = {"images": np.concatenate([p[0] for p in parts]),
            "labels": np.stack([np.concatenate([p[k] for p in parts]) for k in (1, 2, 3)], axis=1).astype(np.int64)}
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **pool)
    return pool


def heldout(cfg: TrainConfig, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out renders (never in a training pool): ([-1,1] images, (N, 3) labels)."""
    scenes = sample_scenes((cfg.seed, HELDOUT), n or cfg.eval_size)
    labels = torch.from_numpy(np.stack([scenes.colour, scenes.shape, scenes.background], axis=1))
    return to_tensor(render(scenes)), labels


def warmup_lr(base: float, step: int, warmup: int = 100, total: int | None = None, floor: float = 0.05) -> float:
    """Linear warm-up, then constant (total=None) or cosine decay to floor·base at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    if total is None:
        return base
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def augment(images: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Evaluator augmentation: random 3×3 blur (half the batch) and mild Gaussian noise, so the
    classifiers also read slightly degraded (generated / edited) images."""
    blur = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    pick = (torch.rand(images.shape[0], 1, 1, 1, generator=gen) < 0.5).float()
    sigma = torch.rand(images.shape[0], 1, 1, 1, generator=gen) * 0.08
    out = pick * blur + (1 - pick) * images + sigma * torch.randn(images.shape, generator=gen)
    return out.clamp(-1, 1)


class Checkpoint:
    """Atomic save/load of a stage's training state under ``<out>/<stage>/ckpt.pt``."""

    def __init__(self, cfg: TrainConfig, stage: str):
        self.dir = cfg.out / stage
        self.path = self.dir / "ckpt.pt"

    def load(self) -> dict[str, Any] | None:
        if not self.path.is_file():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, state: dict[str, Any]) -> None:
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)


class Log:
    """Append-only JSON-lines training log per stage."""

    def __init__(self, cfg: TrainConfig, stage: str):
        self.path = cfg.out / stage / "log.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **record) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


def train_loop(cfg: TrainConfig, stage: str, modules: dict[str, torch.nn.Module], params, loss_fn,
               lr_fn, ema: dict[str, torch.nn.Module] | None = None, ema_decay: float | None = None) -> dict:
    """Generic resumable loop: ``loss_fn(step, gen)`` returns (loss, stats dict)."""
    ckpt, log = Checkpoint(cfg, stage), Log(cfg, stage)
    optimizer = torch.optim.AdamW(params, lr=lr_fn(0), weight_decay=0.01 if stage != "vae" else 0.0)
    state = ckpt.load()
    start = 0
    elapsed = 0.0
    if state is not None:
        for name, module in modules.items():
            module.load_state_dict(state["modules"][name])
        for name, module in (ema or {}).items():
            module.load_state_dict(state["ema"][name])
        optimizer.load_state_dict(state["optimizer"])
        start, elapsed = int(state["step"]), float(state.get("elapsed_s", 0.0))
    total = cfg.steps[stage]

    def save(step: int) -> None:
        ckpt.save({"step": step, "elapsed_s": elapsed, "config": asdict(cfg),
                   "modules": {n: m.state_dict() for n, m in modules.items()},
                   "ema": {n: m.state_dict() for n, m in (ema or {}).items()},
                   "optimizer": optimizer.state_dict()})

    if start >= total:
        return {"step": start, "elapsed_s": elapsed, "resumed": start > 0}
    for module in modules.values():
        module.train()
    began = time.time()
    bar = tqdm(range(start, total), desc=stage, initial=start, total=total, disable=cfg.quiet)
    step = start
    for step in bar:
        t0 = time.time()
        gen = torch.Generator().manual_seed(step_seed(cfg.seed, stage, step))
        for group in optimizer.param_groups:
            group["lr"] = lr_fn(step)
        loss, stats = loss_fn(step, gen)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
        optimizer.step()
        if ema:
            decay = min(ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for name, shadow in ema.items():
                    for p_ema, p in zip(shadow.parameters(), modules[name].parameters()):
                        p_ema.lerp_(p.detach(), 1 - decay)
        elapsed += time.time() - t0
        bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3g}" for k, v in stats.items()})
        if (step + 1) % 10 == 0:
            log.write(step=step + 1, loss=float(loss), lr=lr_fn(step), elapsed_s=round(elapsed, 2), **stats)
        if (step + 1) % cfg.ckpt_every == 0 or step + 1 == total:
            save(step + 1)
            if cfg.max_minutes is not None and time.time() - began > cfg.max_minutes * 60 and step + 1 < total:
                bar.close()
                return {"step": step + 1, "elapsed_s": elapsed, "stopped_early": True}
    bar.close()
    return {"step": total, "elapsed_s": elapsed}


def export_dir(cfg: TrainConfig, stage: str) -> Path:
    return cfg.out / stage / "export"


def finish_export(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)


def staging_dir(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))
