"""StyleDiffusion + P2Plus (Li et al., CVMJ 2024; arXiv 2303.15649); docs/methods.md#presets.

Re-implemented from the paper and the reference behaviour documented in docs/methods.md (the reference repository has no licence).

Inversion
---------
1. Image features E(x): CLIP preprocessing ([-1,1] → [0,1] → bicubic resize of the short side to the
   encoder's ``image_size`` + centre crop → CLIP mean/std) and *all* tokens of the vision tower after
   the post-layernorm, without projection: (1, L, D) with L = (image_size/patch)² + 1 (ViT-B/16: 197×768;
   the tiny test encoder: 65×32). Computed once, no grad.
2. DDIM inversion at w = 1 (conditional pass only), recording at every step k the cross-attention
   maps A*_k of the down and up layers at SD's 16² (``sd_equivalent_resolution``).
3. One mapping network M_i per step: Conv1d(L → 2·77, k=1), [Conv1d(154 → 154) + BatchNorm1d(154) +
   LeakyReLU], Conv1d(154 → 154); its output (1, 154, D) splits into the scale s = out[:, :77] and the
   shift b = out[:, 77:], and ṽ = c ⊙ s + b replaces the text embedding c on the *value* path of
   every cross-attention layer in the conditional branch (keys and the unconditional branch keep c).
4. For i = 0..N−1 (t = timesteps[i], descending), z̄ ← x*_T:
   - M_i ← copy of M_{i−1} (M_0: PyTorch's default Conv1d init, drawn from the job's generator);
   - ε_u = ε_θ(z̄, t, ∅) once, no grad (plain null text);
   - k_i = ceil(num_inner_steps·e^{−0.1 i}) iterations at most (100 → 100, 91, 82, …) of
     loss = MSE(DDIM_prev(ε_u + w(ε_θ(z̄, t, c; v ← M_i(E(x))) − ε_u)), x*_{t−Δ})
            + λ_attn · Σ_layers MSE(Â_i, A), A = this pass's 16² cross maps,
     with a fresh Adam(M_i, lr 1e-2·(1 − i/100)) and the NTI early stop loss < ε + i·2e-5
     (``methods.timestep_fit.optimise_items``);
   - z̄ ← DDIM_prev with the trained M_i (no grad).

Item batching (``invert_batch``): B items share every UNet call (DDIM inversion, ε_u, each inner iteration
over the items still optimising, the z̄ update); each item has its own M_i, Adam and early stop. The
mapping networks are *not* batched: M_i runs per item on that item's E(x) alone, because its BatchNorm
takes statistics over its input batch — stacking B items there would mix their features, whereas at B = 1
it sees one item. Only the UNet calls carry B items.

Reproduced quirks: the target maps Â_i are those recorded by the inversion step whose *input* was the
latent z̄ starts from (the reference indexes them by N − i, which at i = 0 is the duplicated last
entry, i.e. inversion step N−1); see ``target_maps_index``. ε_u is reused for the update of z̄ (the
reference recomputes it with the same inputs).

BatchNorm1d: the reference builds the mapping networks in train mode and never switches them to eval,
in optimisation *and* in editing; with a batch of 1 the statistics are taken over the D feature
positions of each of the 154 channels, and the running statistics are never read. ``track_running_stats
=False`` gives exactly those outputs in either mode and leaves no buffers to store.

Editing (P2Plus)
----------------
The batch [source, target] from x*_T with w for both branches and the plain ∅ (LOW_RESOURCE=True in the
reference: separate unconditional/conditional passes; batched here, same math), with a P2P controller
extended by ``P2PlusController``:
- τ_v (``value_replace_steps``): the source branch uses M_i at every step; the target branch only for
  i < N·τ_v, then its plain embedding;
- τ_c (``cross_replace_steps``): P2P cross-attention replacement, rows [0, int(τ_c·(N+1)));
- τ_s (``self_replace_steps``): self-attention replacement for steps < int(N·τ_s) in the conditional
  branch on maps ≤ 32² (SD size; P2P uses 16²);
- τ_u (``uncond_self_replace_steps``): the same replacement in the unconditional branch.

Cost: inversion N forward passes (DDIM) + Σ_i (k_i + 2) forward and Σ_i k_i backward UNet passes
(k_i = ``Inversion.meta["iterations"][i]``) + one image-encoder pass; editing 4N.

Stored in the Inversion: ``x_T``, ``image_features`` E(x) and the mapping networks as flat tensors
``mapping.<i>.<parameter name>``; editing needs no image encoder.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from methods.base import HyperparameterError, Inversion, check_range
from methods.null_text_p2p import NullTextP2P, source_and_null_embeddings
from methods.p2p import (
    AttentionController,
    AttentionLayer,
    P2PController,
    attention_control,
    sd_equivalent_resolution,
    step_window,
)
from methods.steps import classifier_free_guidance, ddim_inversion_loop, ddim_step, reference_autocast
from methods.stylediffusion_mapping import (
    MappingNetwork,
    clip_image_tokens,
    item_scale_shift,
    load_mapping_networks,
    mapping_tensors,
    styled_value,
)
from methods.timestep_fit import TimestepFit, item_fit_meta, item_rows, optimise_items, per_item_mse

ATTENTION_LOSS_SD_RESOLUTION = 16  # the 16² cross maps of the down and up blocks (SD size)
ATTENTION_LOSS_PLACES = ("down", "up")


def target_maps_index(step_index: int, num_steps: int) -> int:
    """Which inversion step's maps supervise optimisation step i: N − i, with N → N − 1 (reference pairing;
    inversion step k evaluated ε_θ(x*_k, ·), and optimisation step i starts from z̄ ≈ x*_{N−i})."""
    return min(num_steps - step_index, num_steps - 1)


# ----------------------------------------------------------------------------------------------
# attention controllers


class ValueInjectionRecorder(AttentionController):
    """Optimisation-time control: UNet batches of one pass per item (conditional, or ε_u's ∅), no branches.

    ``scale_shift`` = (s, b) or None: when set, the value input of every cross-attention layer is
    ṽ = c ⊙ s + b (row a of s, b belongs to row a of the batch). ``maps`` holds, for the last UNet call, the
    cross-attention probabilities (rows, heads, Q, K) of the layers the attention loss uses (kept in the
    graph, so the loss reaches M_i through them).
    """

    def __init__(self, resolution: int) -> None:
        super().__init__(num_branches=1)
        self.resolution = resolution
        self.scale_shift: tuple[torch.Tensor, torch.Tensor] | None = None
        self.maps: dict[str, torch.Tensor] = {}

    def records(self, layer: AttentionLayer) -> bool:
        return layer.is_cross and layer.place in ATTENTION_LOSS_PLACES and layer.resolution == self.resolution

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return self.records(layer)

    def needs_unconditional_probabilities(self, layer: AttentionLayer) -> bool:
        return self.records(layer)  # every row is an item's pass: none is split off as "unconditional"

    def process(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        self.maps[layer.name] = probs
        return probs

    def value_context(self, context: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return context if self.scale_shift is None else styled_value(context, *self.scale_shift)


class P2PlusController(P2PController):
    """P2P + StyleDiffusion's value path (τ_v) + self-attention replacement in the unconditional branch (τ_u).

    ``value_scale_shift[i]`` = M_i(E(x)); ``value_steps`` = N·τ_v (the target branch uses M_i while
    i < N·τ_v); ``uncond_self_window`` = [int(N·u0), int(N·u1)) steps of unconditional replacement, on
    the same maps as the conditional one (≤ ``self_max_resolution``²).
    """

    def __init__(self, *args, value_scale_shift: list[tuple[torch.Tensor, torch.Tensor]], value_steps: float,
                 uncond_self_window: tuple[int, int], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.value_scale_shift = value_scale_shift
        self.value_steps = value_steps
        self.uncond_self_window = uncond_self_window

    def replaces_uncond_self(self, layer: AttentionLayer) -> bool:
        start, end = self.uncond_self_window
        return not layer.is_cross and layer.resolution <= self.self_max_resolution and start <= self.cur_step < end

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return super().needs_probabilities(layer) or self.replaces_uncond_self(layer)

    def needs_unconditional_probabilities(self, layer: AttentionLayer) -> bool:
        return self.replaces_uncond_self(layer)

    def edit_unconditional(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return self.replace_self_attention(probs) if self.replaces_uncond_self(layer) else probs

    def value_context(self, context: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        uncond, cond = self.split_batch(context)
        styled = styled_value(cond, *self.value_scale_shift[self.cur_step])
        if self.cur_step >= self.value_steps:  # τ_v: past N·τ_v the targets take their plain embedding
            styled = torch.cat([styled[:1], cond[1:]])
        return styled if uncond is None else torch.cat([uncond, styled])


# ----------------------------------------------------------------------------------------------
# the method


def _window_spec(owner: object, name: str):
    """A replacement-steps hparam given as a fraction or a [start, end] pair of fractions."""
    value = getattr(owner, name)
    value = value if isinstance(value, (int, float)) else tuple(value)
    try:
        step_window(value, 1)
    except (TypeError, ValueError) as err:
        raise HyperparameterError(f"{type(owner).__name__}.{name}={value!r}: expected a fraction in [0, 1] or a pair "
                                  f"[start, end] of fractions ({err})") from err
    return value


@dataclass
class StyleDiffusionP2Plus(NullTextP2P):
    """StyleDiffusion inversion (per-step value mapping networks), then P2Plus editing.

    Defaults: StyleDiffusion CLI (sen-mao/StyleDiffusion@07b388a stylediffusion.py:26-37,978-994): 30 steps,
    w 7.5, num_inner_steps 100 with ceil(100·e^{−0.1 i}) per step, ε 1e-5, attention loss weight 1,
    τ_v .6, τ_c .6, τ_s .8 (≤ 32²), τ_u .5.
    """

    name = "stylediffusion_p2plus"
    version = "1"
    inversion_fields = NullTextP2P.inversion_fields + ("attention_loss_weight",)
    stochastic = True  # M_0's init is drawn from the job's generator: the seed changes the output (and the cache key)
    uses_image_encoder = True

    num_steps: int = 30  # NUM_DDIM_STEPS (PnPInversion's PIE-Bench re-run: 50)
    num_inner_steps: int = 100  # --num_inner_steps: the budget of step 0; step i gets ceil(n·e^{−0.1 i})
    attention_loss_weight: float = 1.0  # λ_attn (latent:attention = 1:1; 0 = --w_attnloss off)
    cross_replace_steps: float | tuple[float, float] | dict[str, float | tuple[float, float]] = 0.6  # τ_c
    self_replace_steps: float | tuple[float, float] = 0.8  # τ_s
    self_replace_max_resolution: int = 32  # P2Plus replaces self-attention up to 32² (P2P: 16²)
    value_replace_steps: float = 0.6  # τ_v
    uncond_self_replace_steps: float | tuple[float, float] = 0.5  # τ_u
    local_blend: bool | str = True  # the CLI always builds LocalBlend(--blend_word)
    reweight: bool | str = True  # the CLI always builds AttentionReweight(--eq_params)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self, "attention_loss_weight", 0.0, 1e6)
        check_range(self, "value_replace_steps", 0.0, 1.0)
        self.uncond_self_replace_steps = _window_spec(self, "uncond_self_replace_steps")

    def inner_step_budgets(self) -> list[int]:
        """k_i^max = ceil(num_inner_steps · e^{−0.1 i}) (reference `optimization`)."""
        return [math.ceil(self.num_inner_steps * math.exp(-0.1 * i)) for i in range(self.num_steps)]

    # inversion ---------------------------------------------------------------------------
    def invert_batch(self, pipe, images, source_prompts, generators) -> list[Inversion]:
        pipe.scheduler.set_timesteps(self.num_steps)
        cond, uncond = source_and_null_embeddings(pipe, source_prompts)
        with torch.no_grad():
            with reference_autocast(pipe):  # the reference's CLIP runs in fp16 on CUDA, output cast to fp32
                features = clip_image_tokens(pipe.get_image_encoder(), images.to(pipe.device))  # E(x), (B, L, D)
        control = ValueInjectionRecorder(sd_equivalent_resolution(pipe.unet, ATTENTION_LOSS_SD_RESOLUTION))
        inversion_maps: list[dict[str, torch.Tensor]] = []

        def keep_maps(latents: torch.Tensor) -> torch.Tensor:  # A*_k of inversion step k, (B, heads, Q, K)
            inversion_maps.append(control.maps)
            control.maps = {}
            return latents

        with attention_control(pipe, control):
            with torch.no_grad():
                trajectory = ddim_inversion_loop(pipe, pipe.encode_image(images), cond, uncond, 1.0, on_step=keep_maps)
            networks, fits = self.mapping_optimisation(pipe, control, trajectory, inversion_maps, features, cond,
                                                       uncond, generators)
        timesteps = [int(t) for t in pipe.scheduler.timesteps]
        return [Inversion({"x_T": trajectory[-1][b:b + 1], "image_features": features[b:b + 1],
                           **mapping_tensors([step[b] for step in networks])},
                          {"timesteps": timesteps, **item_fit_meta(fits, b), "image_tokens": int(features.shape[1])})
                for b in range(len(source_prompts))]

    def mapping_optimisation(self, pipe, control: ValueInjectionRecorder, trajectory: list[torch.Tensor],
                             inversion_maps: list[dict[str, torch.Tensor]], features: torch.Tensor, cond: torch.Tensor,
                             uncond: torch.Tensor, generators: list[torch.Generator],
                             ) -> tuple[list[list[MappingNetwork]], list[list[TimestepFit]]]:
        """Train M_0..M_{N−1} in turn for the B items (module doc, step 4): ``networks[i][b]``, ``fits[i][b]``."""
        scheduler, w, n = pipe.scheduler, self.guidance_scale, self.num_steps
        items = list(range(len(generators)))
        item_networks = [MappingNetwork(*features.shape[1:], cond.shape[-1], device=features.device).initialise(g)
                         for g in generators]  # M_0 of each item, from its own generator
        latent, networks, fits = trajectory[-1], [], []
        for i, (t, budget) in enumerate(zip(scheduler.timesteps, self.inner_step_budgets())):
            if i > 0:
                item_networks = [copy.deepcopy(network) for network in item_networks]  # M_i ← M_{i−1}
            target = trajectory[len(trajectory) - i - 2]  # x*_{t−Δ}
            target_maps = inversion_maps[target_maps_index(i, n)]  # Â_i
            control.scale_shift = None
            with torch.no_grad():
                eps_uncond = pipe.unet_eps(latent, t, uncond)  # ε_u, plain ∅

            def item_losses(active: list[int], latent=latent, t=t, eps_uncond=eps_uncond, target=target,
                            target_maps=target_maps, item_networks=item_networks) -> torch.Tensor:
                control.scale_shift, control.maps = item_scale_shift(item_networks, features, active), {}
                z = item_rows(latent, active)
                eps = classifier_free_guidance(item_rows(eps_uncond, active),
                                               pipe.unet_eps(z, t, item_rows(cond, active)), w)
                latent_loss = per_item_mse(ddim_step(scheduler, eps, int(t), z), item_rows(target, active))
                attention_loss = sum(per_item_mse(control.maps[name], item_rows(ref, active))
                                     for name, ref in target_maps.items())
                return latent_loss + self.attention_loss_weight * attention_loss

            for network in item_networks:
                network.train().requires_grad_(True)
            fits.append(optimise_items([network.parameters() for network in item_networks], item_losses, i, budget,
                                       self.early_stop_epsilon))
            for network in item_networks:
                network.eval().requires_grad_(False)
            with torch.no_grad():  # z̄ ← DDIM_prev(ε_u + w(ε_θ(z̄, t, c; M_i) − ε_u))
                control.scale_shift = item_scale_shift(item_networks, features, items)
                eps = classifier_free_guidance(eps_uncond, pipe.unet_eps(latent, t, cond), w)
                latent = ddim_step(scheduler, eps, int(t), latent)
            networks.append(item_networks)
        control.scale_shift = None
        return networks, fits

    # editing -----------------------------------------------------------------------------
    def unconditional_embeddings(self, pipe, inversion: Inversion) -> torch.Tensor:
        """The plain null text for both branches (StyleDiffusion does not optimise ∅)."""
        return pipe.encode_prompts(["", ""])

    @torch.no_grad()
    def edit_controller(self, pipe, inversion: Inversion, item) -> P2PController:
        features = inversion.tensors["image_features"].float()
        n, context_width = self.num_steps, pipe.encode_prompts([""]).shape[-1]
        scale_shift = [net(features) for net in load_mapping_networks(inversion, n, context_width)]
        return self.p2p_controller(pipe, item, n, controller_class=P2PlusController, value_scale_shift=scale_shift,
                                   value_steps=n * self.value_replace_steps,
                                   uncond_self_window=step_window(self.uncond_self_replace_steps, n))
