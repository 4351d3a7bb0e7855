"""Plug-and-Play diffusion features (Tumanyan et al., CVPR 2023) on DDIM inversion.

Algorithm (N = num_steps, τ_f = feature_injection, τ_A = attention_injection):

1. DDIM inversion x_0 → x_T of the source latent with the *inversion prompt* (the source prompt for
   PnPInversion's PIE-Bench run, "" for pnp-diffusers) at guidance ``inversion_guidance_scale`` (1 in both
   references: conditional prediction only). The whole trajectory [x_0, …, x_T] is cached.
2. Generation from x_T with the target prompt and CFG w = ``guidance_scale`` against ``negative_prompt``.
   Each step runs ONE UNet batch of three rows per item, [source, target ∅⁻, target c] (the reference
   layout; B items: three blocks of B rows, [sources | targets ∅⁻ | targets c], ``runtime.batch_size``):
   the source row carries the source branch — the latent z_t^src (``source_latents``: the DDIM
   reconstruction from x_T evolved in the same batch, or the stored inversion latent x_t) with the
   inversion prompt. During steps i < int(N·τ_f) the residual-branch output of the injection layer of
   both target rows is replaced by the source row's (of the same item); during steps i < int(N·τ_A) so
   are the self-attention queries and keys of the later decoder layers.

Injection layers: SD's decoder layer 4 (ldm ``output_blocks[4]`` = diffusers ``up_blocks[1].resnets[1]``,
the conv2 output before the skip sum) and the self-attention of decoder layers 4–11
(``up_blocks[1].attentions[1:]``, ``up_blocks[2:].attentions[*]``). For any UNet this is "the second layer
of the first decoder block that has attention, and every self-attention from there on" — the same
modules on SD, and well defined on the toy and tiny UNets.

Mechanism: PyTorch forward hooks on ``conv2`` and on ``attn1.to_q`` / ``attn1.to_k`` (whatever attention
processor is installed), removed in ``finally``.

Cost per item: inversion N·(1 if w_inv = 1 else 2) NFE; generation 3N NFE (N UNet calls of batch 3B).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch

from methods.base import HyperparameterError, Inversion, ItemBatchedMethod, check_range, stack_tensors, target_rows
from methods.steps import cfg_passes, classifier_free_guidance, ddim_inversion_loop, ddim_step

INVERSION_PROMPTS = ("source", "empty")
SOURCE_LATENTS = ("reconstruction", "inversion")


def injection_modules(unet) -> tuple[torch.nn.Module, list[torch.nn.Module]]:
    """(residual conv2 of decoder layer 4, self-attention modules of decoder layers 4–11), SD-equivalent."""
    blocks = list(unet.up_blocks)
    first = next((j for j, block in enumerate(blocks) if getattr(block, "attentions", None)), None)
    if first is None or len(blocks[first].resnets) < 2:
        raise ValueError("Plug-and-Play needs a decoder block with attention and at least two layers "
                         "(layers_per_block >= 1); this UNet has none")
    feature = blocks[first].resnets[1].conv2
    attentions = list(blocks[first].attentions[1:])
    for block in blocks[first + 1:]:
        attentions.extend(getattr(block, "attentions", None) or [])
    return feature, [attention.transformer_blocks[0].attn1 for attention in attentions]


class PnPInjection:
    """Forward hooks that copy the source block onto the other two blocks of a [sources | targets ∅ | targets c]
    batch (three blocks of B rows, item b at row b of each): every target row takes its own item's source row.

    ``step`` (set by the sampling loop) selects what is active: the residual features while
    step < ``feature_steps``, self-attention queries/keys while step < ``attention_steps``.
    """

    def __init__(self, unet, feature_steps: int, attention_steps: int) -> None:
        self.unet = unet
        self.feature_steps = feature_steps
        self.attention_steps = attention_steps
        self.step = 0

    def _copy_source(self, limit_name: str):
        def hook(module, args, output):
            if self.step >= getattr(self, limit_name):
                return output
            if output.shape[0] % 3:
                raise ValueError(f"Plug-and-Play injection: batch of {output.shape[0]} rows; expected "
                                 "[source, target uncond, target cond] blocks")
            rows = output.shape[0] // 3
            source = output[:rows]
            return torch.cat([source, source, source])
        return hook

    @contextmanager
    def installed(self) -> Iterator["PnPInjection"]:
        feature, attentions = injection_modules(self.unet)
        handles = []
        try:
            handles.append(feature.register_forward_hook(self._copy_source("feature_steps")))
            for attn in attentions:
                handles.append(attn.to_q.register_forward_hook(self._copy_source("attention_steps")))
                handles.append(attn.to_k.register_forward_hook(self._copy_source("attention_steps")))
            yield self
        finally:
            for handle in handles:
                handle.remove()


@dataclass
class PlugAndPlay(ItemBatchedMethod):
    """Not a DDIM subclass: its loop (and any reference-shaped baseline) is its own."""

    name = "pnp"
    version = "1"
    inversion_fields = ("num_steps", "inversion_guidance_scale", "inversion_prompt")
    stochastic = False

    num_steps: int = 50  # N: inversion and generation steps (PnPInversion NUM_DDIM_STEPS = 50)
    inversion_guidance_scale: float = 1.0  # both references invert with the conditional prediction only
    guidance_scale: float = 7.5  # w of the target branch
    inversion_prompt: str = "source"  # "source": PnPInversion; "empty": pnp-diffusers' default ''
    source_latents: str = "reconstruction"  # z_t^src: "reconstruction" (DDIM+PnP) or "inversion" (x_t stored)
    negative_prompt: str = "ugly, blurry, black, low res, unrealistic"  # ∅⁻ of the target CFG
    feature_injection: float = 0.8  # τ_f
    attention_injection: float = 0.5  # τ_A

    def __post_init__(self) -> None:
        check_range(self, "num_steps", 1, 1000)
        check_range(self, "inversion_guidance_scale", 0.0, 100.0)
        check_range(self, "guidance_scale", 0.0, 100.0)
        check_range(self, "feature_injection", 0.0, 1.0)
        check_range(self, "attention_injection", 0.0, 1.0)
        for name, allowed in (("inversion_prompt", INVERSION_PROMPTS), ("source_latents", SOURCE_LATENTS)):
            if getattr(self, name) not in allowed:
                raise HyperparameterError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: "
                                          f"expected one of {allowed}")

    def source_text(self, source_prompt: str) -> str:
        return source_prompt if self.inversion_prompt == "source" else ""

    @torch.no_grad()
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        pipe.scheduler.set_timesteps(self.num_steps)
        cond = pipe.encode_prompts([self.source_text(prompt) for prompt in source_prompts])
        uncond = pipe.encode_prompts([""] * len(source_prompts))
        trajectory = torch.stack(ddim_inversion_loop(pipe, pipe.encode_image(images), cond, uncond,
                                                     self.inversion_guidance_scale))  # (N+1, B, C, h, w)
        meta = {"timesteps": [int(t) for t in pipe.scheduler.timesteps]}
        # each item keeps its own copy of its trajectory (not a view that would hold the whole batch's)
        return [Inversion({"x_T": trajectory[-1, b:b + 1].clone(), "trajectory": trajectory[:, b:b + 1].clone()},
                          dict(meta)) for b in range(len(source_prompts))]

    @torch.no_grad()
    def edit_latents_batch(self, pipe, inversions: list[Inversion], items) -> torch.Tensor:
        """[source branch, target] latents of every item after generation, item-major (2B rows)."""
        scheduler = pipe.scheduler
        scheduler.set_timesteps(self.num_steps)
        batch = len(items)
        # the UNet batch is three blocks of B rows, [sources | targets ∅⁻ | targets c] (PnPInjection)
        embeddings = pipe.encode_prompts([self.source_text(item.source_prompt) for item in items]
                                         + [self.negative_prompt] * batch + [item.target_prompt for item in items])
        source = target = stack_tensors(inversions, "x_T")
        if self.source_latents == "inversion":  # x_{t_k} of every item, (N+1, B, C, h, w), ascending t
            trajectory = torch.cat([inversion.tensors["trajectory"] for inversion in inversions], dim=1)
        injection = PnPInjection(pipe.unet, int(self.num_steps * self.feature_injection),
                                 int(self.num_steps * self.attention_injection))
        with injection.installed():
            for i, t in enumerate(scheduler.timesteps):
                injection.step = i
                eps = pipe.unet_eps(torch.cat([source, target, target]), t, embeddings)
                eps_source, eps_uncond, eps_cond = eps.chunk(3)
                target = ddim_step(scheduler, classifier_free_guidance(eps_uncond, eps_cond, self.guidance_scale),
                                   int(t), target)
                if self.source_latents == "reconstruction":
                    source = ddim_step(scheduler, eps_source, int(t), source)
                else:
                    source = trajectory[self.num_steps - 1 - i]
        return torch.stack([source, target], dim=1).flatten(0, 1)

    def edit_latents(self, pipe, inversion: Inversion, item) -> torch.Tensor:
        """One item's [source branch, target] latents."""
        return self.edit_latents_batch(pipe, [inversion], [item])

    def edit_batch(self, pipe, inversions, items, generators) -> torch.Tensor:
        return pipe.decode_latents(target_rows(self.edit_latents_batch(pipe, inversions, items), len(items)))

    def declared_nfe(self, item) -> tuple[int, int]:
        return cfg_passes(self.inversion_guidance_scale) * self.num_steps, 3 * self.num_steps
