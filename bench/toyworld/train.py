"""Train every toy-world network from a seed, on CPU, resumably.

Stages (``--stage``; ``evaluators`` = the three ``eval_*`` stages, ``generator`` = clip, vae,
vae_decoder, unet, ``all`` = everything):

- ``clip``: a small transformers ``CLIPModel`` trained contrastively on captioned renders; its text
  tower becomes the pipeline's ``text_encoder`` (frozen afterwards), its vision tower the
  ``image_encoder``.
- ``vae``: diffusers ``AutoencoderKL`` 64×64×3 → 4×16×16 (L1 + MSE + tiny KL); the latent scaling
  factor is set from the latent std of training renders. This fixes the latent space.
- ``vae_decoder``: a short fine-tune of the decoder alone on slightly noised latents of the frozen
  encoder (decoded diffusion samples are never exact encoder outputs); needs only ``vae``, so it can
  run beside ``unet``.
- ``unet``: diffusers ``UNet2DConditionModel`` (ε-prediction, SD's scaled-linear betas 0.00085–0.012,
  1000 steps, min-SNR-5 weights, EMA, 10 % empty-caption dropout for CFG) on frozen VAE latents and
  frozen text-encoder states; exported with the other parts as an SD pipeline folder.
- ``eval_clip`` / ``eval_vit`` / ``eval_alex``: the evaluator backbones (``bench.toyworld.evaluators``),
  trained on a separate pool of renders, independently of the generator.

Determinism and resume: the batch and all noise of step k are pure functions of (seed, stage, k)
(no dropout anywhere), and a checkpoint (model, optimizer, EMA, step) is written atomically every
``ckpt_every`` steps under ``--out``. Killing the process and running the same command again
continues from the last checkpoint and reaches the same weights as an uninterrupted run (same
machine and thread count). Raising ``--steps-<stage>`` later continues a finished stage.
"""

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

from bench.images import psnr
from bench.io import atomic_path, write_json
from bench.toyworld import evaluators as ev
from bench.toyworld.generator import all_captions, render, rng_from, sample_scenes

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
WEIGHTS_DIR = Path(__file__).parent / "weights"


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


def _finish_export(staging: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging.rename(final)


def _staging(final: Path) -> Path:
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=final.name + ".tmp-", dir=final.parent))


# ----------------------------------------------------------------------------------------------
# stage: generator CLIP (transformers)


def gen_clip_config():
    from transformers import CLIPConfig

    from bench.toyworld.tokenizer import build_vocab

    vocab = build_vocab()[0]
    return CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=len(vocab) - 2,
                         eos_token_id=len(vocab) - 1, pad_token_id=len(vocab) - 1, projection_dim=128,
                         attention_dropout=0.0, dropout=0.0),
        vision_config=dict(hidden_size=96, intermediate_size=384, num_hidden_layers=3, num_attention_heads=2,
                           image_size=64, patch_size=8, projection_dim=128, attention_dropout=0.0, dropout=0.0),
        projection_dim=128,
    )


def _toy_tokenizer():
    from transformers import CLIPTokenizer

    from bench.toyworld.tokenizer import write_toy_tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        return CLIPTokenizer.from_pretrained(write_toy_tokenizer(tmp), local_files_only=True)


def contrastive_loss(image_emb: torch.Tensor, caption_emb: torch.Tensor, labels: torch.Tensor,
                     logit_scale: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """Image→caption cross-entropy over all 320 captions plus caption→image in-batch loss with
    every image of the same caption as a positive."""
    image_emb, caption_emb = F.normalize(image_emb, dim=-1), F.normalize(caption_emb, dim=-1)
    scale = logit_scale.exp().clamp(max=100)
    logits = scale * image_emb @ caption_emb.T  # (B, 320)
    loss_i = F.cross_entropy(logits, labels)
    present = torch.unique(labels)
    positives = (labels[None, :] == present[:, None]).float()  # (P, B)
    logits_t = scale * caption_emb[present] @ image_emb.T
    loss_t = -(positives / positives.sum(1, keepdim=True) * F.log_softmax(logits_t, dim=1)).sum(1).mean()
    acc = float((logits.argmax(1) == labels).float().mean())
    return (loss_i + loss_t) / 2, {"acc": acc}


def caption_labels(labels: np.ndarray) -> torch.Tensor:
    from bench.toyworld.generator import caption_index

    return torch.from_numpy(caption_index(labels[:, 0], labels[:, 1], labels[:, 2]).astype(np.int64))


def train_gen_clip(cfg: TrainConfig) -> dict:
    from transformers import CLIPModel

    pool = make_pool(cfg, POOL_GENERATOR)
    tokenizer = _toy_tokenizer()
    torch.manual_seed(cfg.seed)
    model = CLIPModel(gen_clip_config())
    # captions padded to their own max length: with causal attention the end-token features do
    # not depend on the padding after it, so this equals the 77-token padding used at inference
    caption_ids = tokenizer(all_captions(), padding=True, return_tensors="pt").input_ids
    batch = cfg.batch["clip"]

    def loss_fn(step, gen):
        idx = torch.randint(0, len(pool["images"]), (batch,), generator=gen).numpy()
        images = ev.clip_pixels(to_tensor(pool["images"][idx]))
        labels = caption_labels(pool["labels"][idx])
        image_emb = model.get_image_features(pixel_values=images).pooler_output
        text_emb = model.get_text_features(input_ids=caption_ids).pooler_output
        return contrastive_loss(image_emb, text_emb, labels, model.logit_scale)

    base = cfg.lr["clip"]
    info = train_loop(cfg, "clip", {"model": model}, model.parameters(), loss_fn,
                      lambda s: warmup_lr(base, s, total=cfg.steps["clip"]))
    model.eval()
    export_gen_clip(cfg, model)
    info["quality"] = quality_gen_clip(cfg, model, tokenizer)
    return info


def split_clip(model):
    """The text and vision towers of a trained transformers CLIPModel as CLIPTextModel / CLIPVisionModel
    (copied by state-dict keys: transformers 5 towers have no ``text_model`` attribute)."""
    from transformers import CLIPTextModel, CLIPVisionModel

    state = model.state_dict()
    parts = {}
    for cls, prefix, sub_cfg in ((CLIPTextModel, "text_model.", model.config.text_config),
                                 (CLIPVisionModel, "vision_model.", model.config.vision_config)):
        tower = cls(sub_cfg)
        own = tower.state_dict()
        picked = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if set(own) != set(picked):  # some versions keep the prefix inside the tower
            picked = {k: v for k, v in state.items() if k.startswith(prefix)}
        tower.load_state_dict(picked, strict=True)
        parts[prefix.rstrip("._")] = tower.eval()
    return parts["text_model"], parts["vision_model"]


def export_gen_clip(cfg: TrainConfig, model) -> None:
    from transformers import CLIPImageProcessor

    from bench.toyworld.tokenizer import write_toy_tokenizer

    final = export_dir(cfg, "clip")
    staging = _staging(final)
    text, vision = split_clip(model)
    text.save_pretrained(staging / "text_encoder", safe_serialization=True)
    vision.save_pretrained(staging / "image_encoder", safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64},
                       image_mean=list(ev.OPENAI_MEAN), image_std=list(ev.OPENAI_STD)).save_pretrained(
        staging / "image_encoder")
    model.save_pretrained(staging / "clip_full", safe_serialization=True)  # for the quality report
    write_toy_tokenizer(staging / "tokenizer")
    _finish_export(staging, final)


def gen_clip_classifier(model, tokenizer) -> ev.ClipAttributeClassifier:
    def encode_text(texts):
        ids = tokenizer(texts, padding=True, return_tensors="pt").input_ids
        return model.get_text_features(input_ids=ids).pooler_output

    return ev.ClipAttributeClassifier(lambda px: model.get_image_features(pixel_values=px).pooler_output,
                                      encode_text)


def quality_gen_clip(cfg: TrainConfig, model, tokenizer) -> dict:
    images, labels = heldout(cfg)
    return ev.attribute_accuracy(gen_clip_classifier(model.eval(), tokenizer).classify(images), labels)


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
    staging = _staging(final)
    vae.save_pretrained(staging / "vae", safe_serialization=True)
    _finish_export(staging, final)
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
    staging = _staging(final)
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
    _finish_export(staging, final)
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


# ----------------------------------------------------------------------------------------------
# evaluator stages


def _eval_batch(pool, idx, gen) -> tuple[torch.Tensor, torch.Tensor]:
    return augment(to_tensor(pool["images"][idx]), gen), torch.from_numpy(pool["labels"][idx])


def attribute_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return sum(F.cross_entropy(logits[:, s], labels[:, k]) for k, s in enumerate(ev.ATTRIBUTE_SLICES.values()))


def attribute_predict(logits: torch.Tensor) -> torch.Tensor:
    return torch.stack([logits[:, s].argmax(1) for s in ev.ATTRIBUTE_SLICES.values()], dim=1)


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, fp16: bool) -> None:
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
    _save_safetensors(state, out / f"{name}.safetensors", cfg.fp16)
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
        staging = _staging(clip_export)
        CLIPTextModel.from_pretrained(pipeline / "text_encoder", torch_dtype=torch.float32).save_pretrained(
            staging / "text_encoder")
        CLIPVisionModel.from_pretrained(pipeline / "image_encoder", torch_dtype=torch.float32).save_pretrained(
            staging / "image_encoder")
        shutil.copy(pipeline / "image_encoder" / "preprocessor_config.json", staging / "image_encoder")
        shutil.copytree(pipeline / "tokenizer", staging / "tokenizer")
        _finish_export(staging, clip_export)
    if not vae_export.exists():
        staging = _staging(vae_export)
        AutoencoderKL.from_pretrained(pipeline / "vae", torch_dtype=torch.float32).save_pretrained(staging / "vae")
        _finish_export(staging, vae_export)
    state = json.loads((pipeline / "training_state.json").read_text())
    init = cfg.out / "unet" / "init_from_weights.safetensors"
    if Checkpoint(cfg, "unet").load() is None and not init.is_file():
        from diffusers import UNet2DConditionModel

        unet = UNet2DConditionModel.from_pretrained(pipeline / "unet", torch_dtype=torch.float32)
        _save_safetensors(unet.state_dict(), init, fp16=False)
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
