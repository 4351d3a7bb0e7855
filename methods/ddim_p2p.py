"""DDIM inversion + Prompt-to-Prompt (Hertz et al., ICLR 2023); presets in docs/methods.md#presets.

Inversion is ``methods.ddim.DDIM``'s (same hparams, same cache entry shape). Editing runs the batch
[source, target] from the same x_T with deterministic DDIM; the UNet batch holds the unconditional
and conditional rows of both branches, [∅, ∅, c_src, c_tgt], with per-branch guidance
[source_guidance_scale, guidance_scale] (NTI notebook copies: 7.5 for both; EF repo `p2pddim`:
[inversion_guidance_scale, guidance_scale]). The P2P controller (``methods.p2p``) edits only the
conditional rows of the target branch, with N = num_steps in its step fractions: textbook P2P.

``reference_quirks=True`` (preset ``ddim_p2p_ef``) computes instead what the EF-DDPM repo's `p2pddim`
baseline computed, i.e. the EF paper's "DDIM+P2P" curve (docs/methods.md#ddim-p2p-ef-quirks): its
``ptp_classes.LOW_RESOURCE`` is True while ``text2image_ldm_stable`` runs one batched UNet call per step
(``low_resource=False``), so the reference controller skips the first UNet call's attention layers as
if they were the unconditional pass and edits the second call's, and its step counter advances once
per two calls. Hence: only odd UNet calls k (0-based) are edited, at controller step k // 2 (cross α row
k // 2, self window on k // 2); and the edit acts on the whole 4-row batch viewed as two "branches" of
2·heads maps, [∅_src, ∅_tgt] (as the source) and [c_src, c_tgt] (as the target): both conditional rows,
the source branch's included, take the mapped unconditional maps wherever α = 1 (self-attention: the
unconditional maps themselves), so the source branch does not retrace its own trajectory.

Cost: inversion as DDIM; editing 4N NFE (N UNet calls of batch 4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.base import HyperparameterError, check_range, stack_tensors
from methods.ddim import DDIM
from methods.p2p import AttentionLayer, P2PController, P2PEditHparams, attention_control
from methods.steps import ddim_sampling_loop


class LowResourceQuirkController(P2PController):
    """The EF-DDPM repo's p2pddim controller behaviour (module doc): edits UNet calls 1, 3, 5, … at step
    k // 2, on the full [∅_src, ∅_tgt, c_src, c_tgt] batch with [∅ rows] as source and [c rows] as target."""

    def reference_step(self) -> int:
        return self.cur_step // 2  # the reference counter: one step per two UNet calls

    def edits_this_call(self) -> bool:
        return self.cur_step % 2 == 1  # the first call of each pair is taken for the "unconditional pass"

    def cross_alpha(self) -> torch.Tensor:
        return self.cross_schedule[self.reference_step()]

    def replaces_self(self, layer: AttentionLayer) -> bool:
        start, end = self.self_window
        return (self.edits_this_call() and not layer.is_cross and layer.resolution <= self.self_max_resolution
                and start <= self.reference_step() < end)

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return self.edits_this_call() and (layer.is_cross or self.replaces_self(layer))

    def needs_unconditional_probabilities(self, layer: AttentionLayer) -> bool:
        return True  # the reference edits the whole batch, unconditional rows included

    def process(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        if probs.shape[0] != 2 * self.num_branches:
            raise ValueError(f"reference_quirks needs the batched [∅…, c…] UNet call of {2 * self.num_branches} rows, "
                             f"got {probs.shape[0]} (guidance_scale 1 runs conditional rows only)")
        rows = probs.reshape(2, self.num_branches * probs.shape[1], *probs.shape[2:])  # (∅ rows | c rows, heads)
        base, replace = rows[0], rows[1:]
        if layer.is_cross:
            alpha = self.cross_alpha().to(probs)[:, None, None, :]
            edited = self.mapping(base, replace) * alpha + replace * (1 - alpha)
        else:
            edited = base[None].expand_as(replace)
        return torch.cat([rows[:1], edited]).reshape(probs.shape)


@dataclass
class DDIMP2P(P2PEditHparams, DDIM):
    name = "ddim_p2p"
    version = "1"

    # defaults = conf/method/ddim_p2p.yaml (tests/test_presets.py checks every method's defaults against its YAML)
    source_guidance_scale: float = 7.5  # w of the source branch during editing
    cross_replace_steps: float | tuple[float, float] | dict[str, float | tuple[float, float]] = 0.8
    self_replace_steps: float | tuple[float, float] = 0.5
    self_replace_max_resolution: int = 32
    blend_start: float = 0.2
    reference_quirks: bool = False  # True: the EF repo's p2pddim call pattern (module doc)

    def __post_init__(self) -> None:
        DDIM.__post_init__(self)
        check_range(self, "source_guidance_scale", 0.0, 100.0)
        self.check_p2p_hparams()
        if self.reference_quirks and self.local_blend:
            raise HyperparameterError(f"{type(self).__name__}.reference_quirks=True reproduces the EF repo's p2pddim, "
                                      f"which has no LocalBlend; got local_blend={self.local_blend!r}")

    @torch.no_grad()
    def edit_latents_batch(self, pipe, inversions, items) -> torch.Tensor:
        """[source, target] latents of every item after editing, item-major (2B rows)."""
        pipe.scheduler.set_timesteps(self.num_steps)
        cond = pipe.encode_prompts([prompt for item in items for prompt in (item.source_prompt, item.target_prompt)])
        uncond = pipe.encode_prompts([""] * 2 * len(items))
        scales = torch.tensor([self.source_guidance_scale, self.guidance_scale] * len(items))
        x_T = stack_tensors(inversions, "x_T").repeat_interleave(2, dim=0)
        controller_class = LowResourceQuirkController if self.reference_quirks else P2PController
        controller = self.p2p_batch_controller(pipe, items, self.num_steps, controller_class=controller_class)
        with attention_control(pipe, controller):
            return ddim_sampling_loop(pipe, x_T, cond, uncond, scales, on_step=controller.step_callback)

    def declared_nfe(self, item) -> tuple[int, int]:
        return DDIM.declared_nfe(self, item)[0], 4 * self.num_steps
