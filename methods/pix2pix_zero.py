"""pix2pix-zero (Parmar et al., SIGGRAPH 2023): regularised DDIM inversion, an embedding-space edit
direction and cross-attention guidance.

Inversion (N = num_steps): DDIM inversion with the source prompt at w = ``inversion_guidance_scale`` (1 in
the reference), where each step's noise prediction ε̂ is first pushed towards white Gaussian noise by
``num_inner_steps`` rounds of gradient steps on
  L_ac = Σ_c Σ_levels [mean(η · roll_s(η, H))² + mean(η · roll_s(η, W))²]   (η: one channel, average-pooled
         ×2 per level until ≤ 8², s ~ U{0, …, size/2 − 1} per channel and level; ``num_ac_rolls`` draws,
         each step ε̂ ← ε̂ − λ_ac ∇L_ac / num_ac_rolls)
  L_kl = σ² + μ² − 1 − log(σ² + 1e-7)   (μ, σ² of all entries of ε̂; step ε̂ ← ε̂ − λ_kl ∇L_kl).
Reference: pix2pixzero/pix2pix-zero@25b8857 src/utils/ddim_inv.py:17-38 (losses), :56-59 (weights,
counts), :107-124 (the loop). With B items in a batch (``runtime.batch_size``) each item's ε̂ is regularised
on its own: its shifts come from its own generator and each gradient is that of its own loss.

Editing: the edit direction Δ = mean E(S_tgt) − mean E(S_src) of the text encoder's hidden states
(77 × D) over two sentence sets (``direction: sentences``; the sets are text files in
``methods/pix2pix_zero_directions/<word>.txt`` chosen by the item's blend words, embedded with the
model's own text encoder and cached by ``EditPipeline.encode_prompts``), or E(target prompt) −
E(source prompt) (``direction: prompts``, PnPInversion's PIE-Bench run). With c = E(source prompt):
per step t, a reference branch z^ref runs plain DDIM with c and its cross-attention maps M^ref_t are
kept; the edited latent x is duplicated as the [c, c + Δ] CFG pair, moved by one SGD step of size
λ_xa = ``lambda_xa`` on Σ_layers mean_{rows, heads} Σ_{q, k} (M_t(x) − M^ref_t)², the noise
is recomputed at the moved pair, and x ← DDIM(x_pair[0], ε(c) + w (ε(c + Δ) − ε(c))) with w = ``guidance_scale``
(the "negative prompt" is the unedited prompt). Reference: src/utils/edit_pipeline.py:79-109 (reference
pass), :114-116 (c + Δ), :119-157 (guided loop); Δ: src/utils/edit_directions.py ``construct_direction``.
B items run every UNet call together, each with its own c, Δ and M^ref; the guidance step takes the gradient
of the sum of the per-item losses, which at an item's rows is the gradient of its own loss.

Cost per item: inversion N·(1 if w_inv = 1 else 2) NFE; editing 5N forward NFE (reference branch 1 row, guided
and recomputed pair 2 + 2 rows) plus N backward passes of the 2-row pair from the cross-attention maps
down to the input (the pipeline counter counts backward NFE at the UNet output, which this loss does
not read, so it reports 0 backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from methods.base import (
    HyperparameterError,
    Inversion,
    ItemBatchedMethod,
    check_range,
    split_inversions,
    stack_tensors,
    target_rows,
)
from methods.p2p import AttentionController, attention_control
from methods.steps import cfg_passes, classifier_free_guidance, ddim_inversion_step, ddim_step, guided_noise

DIRECTIONS_DIR = Path(__file__).resolve().parent / "pix2pix_zero_directions"
DIRECTION_MODES = ("sentences", "prompts")
AC_MIN_SIZE = 8  # the pyramid stops after the level whose side is ≤ 8


# ----------------------------------------------------------------------------------------------
# noise regularisation


def roll_shifts(generator: torch.Generator, channels: int, size: int) -> torch.Tensor:
    """(channels, levels): per channel, per pyramid level, the random shift s ∈ {0, …, side/2 − 1} (the
    reference's randrange), drawn channel by channel, level by level."""
    shifts = []
    for _ in range(channels):
        side, levels = size, []
        while True:
            levels.append(int(torch.randint(0, max(side // 2, 1), (1,), generator=generator)))
            if side <= AC_MIN_SIZE:
                break
            side //= 2
        shifts.append(levels)
    return torch.tensor(shifts)


def roll_maps(maps: torch.Tensor, shifts: torch.Tensor, dim: int) -> torch.Tensor:
    """``torch.roll`` of every map of ``maps`` (B, C, H, W) along ``dim`` (2 or 3) by its own shift (B, C)."""
    size = maps.shape[dim]
    index = (torch.arange(size, device=maps.device) - shifts.to(maps.device)[..., None]) % size  # (B, C, size)
    index = index[..., :, None] if dim == 2 else index[..., None, :]
    return maps.gather(dim, index.expand_as(maps))


def auto_correlation_loss(noise: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """L_ac of every sample of ``noise`` (B, C, H, W) with explicit shifts (B, C, levels) (``roll_shifts``): (B,)."""
    loss = noise.new_zeros(noise.shape[0])
    level = noise
    for k in range(shifts.shape[-1]):
        if k:
            level = F.avg_pool2d(level, kernel_size=2)
        for dim in (2, 3):
            loss = loss + ((level * roll_maps(level, shifts[..., k], dim)).mean((2, 3)) ** 2).sum(1)
    return loss


def kl_loss(noise: torch.Tensor) -> torch.Tensor:
    """L_kl = σ² + μ² − 1 − log(σ² + 1e-7) of every sample of ``noise`` (B, …) over its entries (σ² unbiased,
    as torch.var): (B,)."""
    flat = noise.flatten(1)
    var = flat.var(dim=1)
    return var + flat.mean(dim=1) ** 2 - 1 - torch.log(var + 1e-7)


def _gradient(loss_fn, value: torch.Tensor) -> torch.Tensor:
    """∇ of Σ_b loss_fn(value)_b: each sample's gradient of its own loss (the losses are per sample)."""
    with torch.enable_grad():
        leaf = value.detach().requires_grad_(True)
        return torch.autograd.grad(loss_fn(leaf).sum(), leaf)[0]


def regularize_noise(eps: torch.Tensor, lambda_ac: float, lambda_kl: float, num_inner_steps: int,
                     num_ac_rolls: int, generators: list[torch.Generator]) -> torch.Tensor:
    """ε̂ (B, C, H, W) after the reference's regularisation rounds, each sample on its own: sample b draws its
    shifts from ``generators[b]`` (the draws it makes when it is regularised alone, whatever B is)."""
    if len(generators) != len(eps):
        raise ValueError(f"regularize_noise: {len(generators)} generators for {len(eps)} samples; expected one each")
    channels, size = eps.shape[1], eps.shape[-1]
    for _ in range(num_inner_steps):
        if lambda_ac > 0:
            for _ in range(num_ac_rolls):
                shifts = torch.stack([roll_shifts(generator, channels, size) for generator in generators])
                eps = eps - lambda_ac * _gradient(lambda x: auto_correlation_loss(x, shifts), eps) / num_ac_rolls
        if lambda_kl > 0:
            eps = eps - lambda_kl * _gradient(kl_loss, eps)
    return eps


# ----------------------------------------------------------------------------------------------
# edit direction


def sentence_set(word: str, directory: Path = DIRECTIONS_DIR) -> list[str]:
    """The sentences of ``<directory>/<word>.txt`` (one per non-empty line)."""
    path = directory / f"{word}.txt"
    if not path.is_file():
        available = sorted(p.stem for p in directory.glob("*.txt"))
        raise ValueError(f"pix2pix-zero: no sentence set for {word!r} (expected {path}); available: {available}. "
                         "Add the file or use direction=prompts")
    sentences = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not sentences:
        raise ValueError(f"pix2pix-zero: sentence set {path} is empty; expected one sentence per line")
    return sentences


def mean_embedding(pipe, sentences: list[str]) -> torch.Tensor:
    """mean over sentences of the text encoder's hidden states, (1, 77, D)."""
    return pipe.encode_prompts(sentences).mean(0, keepdim=True)


class CrossAttentionRecorder(AttentionController):
    """Keeps the last call's cross-attention probabilities (rows, heads, Q, 77) of every layer, with grad."""

    def __init__(self) -> None:
        super().__init__(num_branches=1)
        self.maps: dict[str, torch.Tensor] = {}

    def needs_probabilities(self, layer) -> bool:
        return layer.is_cross

    def needs_unconditional_probabilities(self, layer) -> bool:
        return layer.is_cross

    def process(self, probs: torch.Tensor, layer) -> torch.Tensor:
        self.maps[layer.name] = probs
        return probs


def attention_loss(maps: dict[str, torch.Tensor], reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ_items Σ_layers mean_{the item's [c, c + Δ] rows, heads} Σ_{q, k} (M − M^ref)² (edit_pipeline.py:135-141):
    the sum of the per-item losses, so its gradient at an item's rows is that item's own (UNet rows are
    independent), whatever other items share the batch."""
    return sum(((maps[name] - ref) ** 2).sum() / (2 * ref.shape[1]) for name, ref in reference.items())


# ----------------------------------------------------------------------------------------------
# the method


@dataclass
class Pix2PixZero(ItemBatchedMethod):
    """Not a DDIM subclass: its loop (and any reference-shaped baseline) is its own."""

    name = "pix2pix_zero"
    version = "1"
    inversion_fields = ("num_steps", "inversion_guidance_scale", "lambda_ac", "lambda_kl", "num_inner_steps",
                        "num_ac_rolls")
    stochastic = True  # the auto-correlation shifts are random

    num_steps: int = 50  # N (inversion.py / edit_real.py --num_ddim_steps 50)
    inversion_guidance_scale: float = 1.0  # inversion.py: pipe(..., guidance_scale=1)
    guidance_scale: float = 5.0  # edit_real.py --negative_guidance_scale 5.0
    lambda_ac: float = 20.0  # ddim_inv.py lambda_ac
    lambda_kl: float = 20.0  # ddim_inv.py lambda_kl
    num_inner_steps: int = 5
    num_ac_rolls: int = 5
    lambda_xa: float = 0.1  # λ_xa, edit_real.py --xa_guidance 0.1
    direction: str = "sentences"  # "sentences" (sentence sets by blend words) or "prompts"

    def __post_init__(self) -> None:
        check_range(self, "num_steps", 1, 1000)
        check_range(self, "inversion_guidance_scale", 0.0, 100.0)
        check_range(self, "guidance_scale", 0.0, 100.0)
        check_range(self, "lambda_ac", 0.0, 1e4)
        check_range(self, "lambda_kl", 0.0, 1e4)
        check_range(self, "num_inner_steps", 0, 100)
        check_range(self, "num_ac_rolls", 1, 100)
        check_range(self, "lambda_xa", 0.0, 1e4)
        if self.direction not in DIRECTION_MODES:
            raise HyperparameterError(f"{type(self).__name__}.direction={self.direction!r}: "
                                      f"expected one of {DIRECTION_MODES}")

    @torch.no_grad()
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        cond, uncond = pipe.encode_prompts(source_prompts), pipe.encode_prompts([""] * len(source_prompts))
        latents = pipe.encode_image(images)
        for t in scheduler.timesteps.flip(0):
            eps = guided_noise(pipe, latents, t, cond, uncond, self.inversion_guidance_scale)
            eps = regularize_noise(eps, self.lambda_ac, self.lambda_kl, self.num_inner_steps, self.num_ac_rolls,
                                   generators)
            latents = ddim_inversion_step(scheduler, eps, int(t), latents)
        meta = {"timesteps": [int(t) for t in scheduler.timesteps]}
        return split_inversions({"x_T": latents}, meta, len(source_prompts))

    def edit_direction(self, pipe, item) -> torch.Tensor:
        """Δ (1, 77, D)."""
        if self.direction == "prompts":
            source, target = pipe.encode_prompts([item.source_prompt, item.target_prompt]).chunk(2)
            return target - source
        if item.blend_words is None:
            raise ValueError(f"pix2pix-zero direction=sentences: item {item.item_id!r} has no blend_words "
                             "(source word, target word) to choose the sentence sets; use direction=prompts")
        source_word, target_word = item.blend_words
        return (mean_embedding(pipe, sentence_set(target_word))
                - mean_embedding(pipe, sentence_set(source_word)))

    def guided_pair(self, pipe, latents, t, pair, recorder, reference_maps) -> torch.Tensor:
        """[x, x] after one SGD step of size λ_xa on the cross-attention loss."""
        with torch.enable_grad():
            x_in = torch.cat([latents, latents]).requires_grad_(True)
            pipe.unet_eps(x_in, t, pair)
            loss = attention_loss(recorder.maps, reference_maps)
            grad = torch.autograd.grad(loss, x_in)[0]
        return (x_in - self.lambda_xa * grad).detach()

    @torch.no_grad()
    def edit_latents_batch(self, pipe, inversions: list[Inversion], items) -> torch.Tensor:
        """[reference branch, edited] latents of every item, item-major (2B rows)."""
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        batch = len(items)
        source = pipe.encode_prompts([item.source_prompt for item in items])  # c of every item (B, 77, D)
        direction = torch.cat([self.edit_direction(pipe, item) for item in items])  # Δ of every item
        pair = torch.cat([source, source + direction])  # the CFG pair [c | c + Δ], B rows each
        reference = edited = stack_tensors(inversions, "x_T")
        recorder = CrossAttentionRecorder()
        with attention_control(pipe, recorder):
            for t in scheduler.timesteps:
                eps_reference = pipe.unet_eps(reference, t, source)
                reference_maps = {name: m.detach().repeat(2, 1, 1, 1) for name, m in recorder.maps.items()}
                reference = ddim_step(scheduler, eps_reference, int(t), reference)
                x_pair = self.guided_pair(pipe, edited, t, pair, recorder, reference_maps)
                eps_uncond, eps_cond = pipe.unet_eps(x_pair, t, pair).chunk(2)
                edited = ddim_step(scheduler, classifier_free_guidance(eps_uncond, eps_cond, self.guidance_scale),
                                   int(t), x_pair[:batch])
        return torch.stack([reference, edited], dim=1).flatten(0, 1)

    def edit_latents(self, pipe, inversion: Inversion, item) -> torch.Tensor:
        """One item's [reference branch, edited] latents."""
        return self.edit_latents_batch(pipe, [inversion], [item])

    def edit_batch(self, pipe, inversions, items, generators) -> torch.Tensor:
        return pipe.decode_latents(target_rows(self.edit_latents_batch(pipe, inversions, items), len(items)))

    def declared_nfe(self, item) -> tuple[int, int]:
        return cfg_passes(self.inversion_guidance_scale) * self.num_steps, 5 * self.num_steps
