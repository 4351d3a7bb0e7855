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
counts), :107-124 (the loop).

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

Cost: inversion N·(1 if w_inv = 1 else 2) NFE; editing 5N forward NFE (reference branch 1 row, guided
and recomputed pair 2 + 2 rows) plus N backward passes of the 2-row pair from the cross-attention maps
down to the input (the pipeline counter counts backward NFE at the UNet output, which this loss does
not read, so it reports 0 backward).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from methods.base import HyperparameterError, Inversion, Method, check_range
from methods.p2p import AttentionController, attention_control
from methods.steps import classifier_free_guidance, ddim_inversion_step, ddim_step, guided_noise

DIRECTIONS_DIR = Path(__file__).resolve().parent / "pix2pix_zero_directions"
DIRECTION_MODES = ("sentences", "prompts")
AC_MIN_SIZE = 8  # the pyramid stops after the level whose side is ≤ 8


# ----------------------------------------------------------------------------------------------
# noise regularisation


def roll_shifts(generator: torch.Generator, channels: int, size: int) -> list[list[int]]:
    """Per channel, per pyramid level: the random shift s ∈ {0, …, side/2 − 1} (the reference's randrange)."""
    shifts = []
    for _ in range(channels):
        side, levels = size, []
        while True:
            levels.append(int(torch.randint(0, max(side // 2, 1), (1,), generator=generator)))
            if side <= AC_MIN_SIZE:
                break
            side //= 2
        shifts.append(levels)
    return shifts


def auto_correlation_loss(noise: torch.Tensor, shifts: list[list[int]]) -> torch.Tensor:
    """L_ac of one sample (C, H, W) with explicit shifts (``roll_shifts``)."""
    loss = noise.new_zeros(())
    for channel, levels in zip(noise, shifts):
        level = channel[None, None]
        for k, shift in enumerate(levels):
            if k:
                level = F.avg_pool2d(level, kernel_size=2)
            loss = loss + (level * torch.roll(level, shifts=shift, dims=2)).mean() ** 2
            loss = loss + (level * torch.roll(level, shifts=shift, dims=3)).mean() ** 2
    return loss


def kl_loss(noise: torch.Tensor) -> torch.Tensor:
    """L_kl = σ² + μ² − 1 − log(σ² + 1e-7) over all entries (σ² unbiased, as torch.var)."""
    var = noise.var()
    return var + noise.mean() ** 2 - 1 - torch.log(var + 1e-7)


def _gradient(loss_fn, value: torch.Tensor) -> torch.Tensor:
    with torch.enable_grad():
        leaf = value.detach().requires_grad_(True)
        return torch.autograd.grad(loss_fn(leaf), leaf)[0]


def regularize_noise(eps: torch.Tensor, lambda_ac: float, lambda_kl: float, num_inner_steps: int,
                     num_ac_rolls: int, generator: torch.Generator) -> torch.Tensor:
    """ε̂ after the reference's regularisation rounds, each sample of the batch on its own."""
    out = []
    for sample in eps:
        for _ in range(num_inner_steps):
            if lambda_ac > 0:
                for _ in range(num_ac_rolls):
                    shifts = roll_shifts(generator, sample.shape[0], sample.shape[-1])
                    grad = _gradient(lambda x: auto_correlation_loss(x, shifts), sample)
                    sample = sample - lambda_ac * grad / num_ac_rolls
            if lambda_kl > 0:
                sample = sample - lambda_kl * _gradient(kl_loss, sample)
        out.append(sample)
    return torch.stack(out)


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
    """Σ_layers mean_{rows, heads} Σ_{q, k} (M − M^ref)² (edit_pipeline.py:135-141)."""
    return sum(((maps[name] - ref) ** 2).sum((-2, -1)).mean() for name, ref in reference.items())


# ----------------------------------------------------------------------------------------------
# the method


@dataclass
class Pix2PixZero(Method):
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
    def invert(self, pipe, image, source_prompt, generator) -> Inversion:
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        cond, uncond = pipe.encode_prompts([source_prompt, ""]).chunk(2)
        latents = pipe.encode_image(image)
        for t in scheduler.timesteps.flip(0):
            eps = guided_noise(pipe, latents, t, cond, uncond, self.inversion_guidance_scale)
            eps = regularize_noise(eps, self.lambda_ac, self.lambda_kl, self.num_inner_steps, self.num_ac_rolls,
                                   generator)
            latents = ddim_inversion_step(scheduler, eps, int(t), latents)
        return Inversion({"x_T": latents}, {"timesteps": [int(t) for t in scheduler.timesteps]})

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
    def edit_latents(self, pipe, inversion: Inversion, item) -> torch.Tensor:
        """[reference branch, edited] latents."""
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        source = pipe.encode_prompts([item.source_prompt])
        reference = edited = inversion.tensors["x_T"]
        rows = len(edited)
        pair = torch.cat([source, source + self.edit_direction(pipe, item)]).repeat_interleave(rows, 0)
        recorder = CrossAttentionRecorder()
        with attention_control(pipe, recorder):
            for t in scheduler.timesteps:
                eps_reference = pipe.unet_eps(reference, t, source.expand(rows, -1, -1))
                reference_maps = {name: m.detach().repeat(2, 1, 1, 1) for name, m in recorder.maps.items()}
                reference = ddim_step(scheduler, eps_reference, int(t), reference)
                x_pair = self.guided_pair(pipe, edited, t, pair, recorder, reference_maps)
                eps_uncond, eps_cond = pipe.unet_eps(x_pair, t, pair).chunk(2)
                edited = ddim_step(scheduler, classifier_free_guidance(eps_uncond, eps_cond, self.guidance_scale),
                                   int(t), x_pair[:rows])
        return torch.cat([reference, edited])

    def edit(self, pipe, inversion, item, generator) -> torch.Tensor:
        return pipe.decode_latents(self.edit_latents(pipe, inversion, item))[-1]
