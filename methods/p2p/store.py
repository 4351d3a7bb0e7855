"""Attention controllers: the base class (hooks, batch layout) and ``AttentionStore`` (records maps).

The sampling loop calls ``latents = controller.step_callback(latents)`` once after every denoising
(or inversion) step; this advances ``controller.cur_step``. Override points for subclasses (P2P,
StyleDiffusion/P2Plus):

- ``value_context(context, layer)``: the text embedding fed to ``to_v`` of cross-attention
  (key and query are untouched). Default: unchanged.
- ``edit_conditional(probs, layer)`` / ``edit_unconditional(probs, layer)``: edit the
  probabilities of the conditional / unconditional rows, shape (branches, heads, Q, K).
- ``needs_probabilities(layer)``: return True where an override needs explicit probabilities.
- ``needs_unconditional_probabilities(layer)``: return True where ``edit_unconditional`` acts;
  otherwise the unconditional rows of a layer with explicit probabilities run fused.
- ``split_batch(tensor)``: (unconditional rows or None, conditional rows) of any batch-leading
  tensor, for the batch layout below.

Batch layout: a UNet batch holds ``num_branches`` prompts (P2P: [source, target, ...]) either
conditional only (B = branches) or unconditional then conditional (B = 2·branches, the order of
``methods.steps.guided_noise``). The P2P reference edits only the conditional rows.

Typical use of the store (NS-LPIPS mask, 16² at SD's 64² latent)::

    store = AttentionStore(max_resolution=None, record_self=False)
    with attention_control(pipe, store):
        ddim_inversion_loop(pipe, x0, cond, uncond, 1.0, on_step=store.step_callback)
    res = sd_equivalent_resolution(pipe.unet, 16)
    maps = store.aggregate_cross_attention(res, places=("up", "down"))      # (res, res, 77)
    mask = maps[..., word_token_indices(pipe.tokenizer, prompt, word)[0]]
"""

from __future__ import annotations

from typing import Sequence

import torch

from methods.p2p.layers import PLACES, AttentionLayer


class AttentionController:
    """Base controller: sees every attention call, edits nothing (see the module doc for the hooks)."""

    def __init__(self, num_branches: int = 1) -> None:
        if num_branches < 1:
            raise ValueError(f"num_branches={num_branches}: expected at least 1 prompt branch")
        self.num_branches = num_branches
        self.cur_step = 0
        self.layers: dict[str, AttentionLayer] = {}

    def bind(self, layers: dict[str, AttentionLayer]) -> None:
        """Called by ``attention_control`` with the UNet's layers before the first call."""
        self.layers = layers

    # hooks ------------------------------------------------------------------------------
    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return False

    def needs_unconditional_probabilities(self, layer: AttentionLayer) -> bool:
        """True where ``edit_unconditional`` changes the unconditional rows (else they run fused)."""
        return False

    def value_context(self, context: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return context

    def edit_conditional(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return probs

    def edit_unconditional(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return probs

    # batch layout -----------------------------------------------------------------------
    def split_batch(self, tensor: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(unconditional rows or None, conditional rows) for B = branches or 2·branches."""
        batch, branches = tensor.shape[0], self.num_branches
        if batch == branches:
            return None, tensor
        if batch == 2 * branches:
            return tensor[:branches], tensor[branches:]
        raise ValueError(f"{type(self).__name__}: a UNet batch of {batch} is neither {branches} (conditional only) "
                         f"nor {2 * branches} (unconditional + conditional) rows for num_branches={branches}")

    def process(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        """Route (B, H, Q, K) probabilities through the unconditional/conditional edit hooks."""
        uncond, cond = self.split_batch(probs)
        cond = self.edit_conditional(cond, layer)
        if uncond is None:
            return cond
        return torch.cat([self.edit_unconditional(uncond, layer), cond])

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        """Called by the sampling loop after each step; returns the (possibly changed) latents."""
        self.cur_step += 1
        return latents


class AttentionStore(AttentionController):
    """Records conditional-branch attention probabilities (branches, heads, Q, K) per layer, summed over steps.

    ``places``/``max_resolution``/``record_self`` choose the recorded layers (the references keep every
    map ≤ 32² at SD size, to bound memory; ``max_resolution=None`` keeps all). What is recorded is the
    probabilities actually used, i.e. after a subclass's edits (the reference edits the stored tensor
    in place, so its store holds the edited maps too).
    """

    def __init__(self, num_branches: int = 1, places: Sequence[str] = PLACES, max_resolution: int | None = None,
                 record_self: bool = True) -> None:
        super().__init__(num_branches)
        unknown = set(places) - set(PLACES)
        if unknown:
            raise ValueError(f"AttentionStore places={list(places)}: unknown {sorted(unknown)}; "
                             f"expected a subset of {PLACES}")
        self.places = tuple(places)
        self.max_resolution = max_resolution
        self.record_self = record_self
        self.step_maps: dict[str, torch.Tensor] = {}  # the current step's maps
        self.summed_maps: dict[str, torch.Tensor] = {}  # Σ over completed steps

    def records(self, layer: AttentionLayer) -> bool:
        return (layer.place in self.places and (layer.is_cross or self.record_self)
                and (self.max_resolution is None or layer.resolution <= self.max_resolution))

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return self.records(layer)

    def process(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        probs = super().process(probs, layer)
        if self.records(layer):
            self.step_maps[layer.name] = self.split_batch(probs)[1].detach()
        return probs

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        for name, maps in self.step_maps.items():
            self.summed_maps[name] = self.summed_maps[name] + maps if name in self.summed_maps else maps.clone()
        self.step_maps = {}
        return super().step_callback(latents)

    def reset(self) -> None:
        self.cur_step, self.step_maps, self.summed_maps = 0, {}, {}

    def average(self, name: str) -> torch.Tensor:
        """Mean over completed steps of one layer's maps, (branches, heads, Q, K)."""
        if self.cur_step == 0 or name not in self.summed_maps:
            raise ValueError(f"AttentionStore has no maps for layer {name!r} (steps completed: {self.cur_step}; "
                             f"recorded layers: {sorted(self.summed_maps)})")
        return self.summed_maps[name] / self.cur_step

    def recorded_layers(self, kind: str, places: Sequence[str], resolution: int | None) -> list[AttentionLayer]:
        """Recorded layers of a kind ('cross'/'self') in ``places`` (at ``resolution`` if given), UNet order."""
        return [layer for name, layer in self.layers.items() if name in self.summed_maps and layer.kind == kind
                and layer.place in places and (resolution is None or layer.resolution == resolution)]

    def maps(self, kind: str = "cross", places: Sequence[str] = PLACES, resolution: int | None = None,
             summed: bool = False) -> list[torch.Tensor]:
        """Step-averaged (or summed) maps of the selected layers, each (branches, heads, Q, K)."""
        layers = self.recorded_layers(kind, places, resolution)
        if not layers:
            recorded = sorted({(layer.place, layer.kind, layer.resolution)
                               for layer in self.recorded_layers(kind, PLACES, None)})
            raise ValueError(f"AttentionStore: no recorded {kind}-attention maps in places {list(places)} at "
                             f"resolution {resolution}; recorded: {recorded}")
        return [self.summed_maps[layer.name] if summed else self.average(layer.name) for layer in layers]

    def aggregate_cross_attention(self, resolution: int, places: Sequence[str] = ("up", "down"), branch: int = 0,
                                  heads: Sequence[int] | None = None) -> torch.Tensor:
        """(res, res, 77): cross-attention of one branch averaged over steps, the chosen layers and heads."""
        selected = []
        for maps in self.maps("cross", places, resolution):
            maps = maps[branch] if heads is None else maps[branch][list(heads)]
            selected.append(maps.reshape(maps.shape[0], resolution, resolution, maps.shape[-1]))
        return torch.cat(selected).mean(0)
