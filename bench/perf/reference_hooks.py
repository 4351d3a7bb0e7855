"""The references' UNet-call shapes shared by the baselines in ``bench.perf.reference_loops``: an
attention hook that materialises probabilities in every layer, the reference ``AttentionStore`` and
classifier-free guidance as two separate calls or one batched call."""

from __future__ import annotations

import torch

from methods.p2p import AttentionController, AttentionStore, sd_equivalent_resolution
from methods.steps import classifier_free_guidance

STORE_SD_RESOLUTION = 32  # P2P AttentionStore keeps maps with ≤ 32² queries (SD size)


class ReferenceAttention(AttentionController):
    """The references' attention hook: explicit probabilities in every layer, handed to ``inner``.

    Layers where ``inner`` needs no probabilities are materialised and passed through unchanged (the
    reference computes them and its controller returns them as they are). ``unconditional_pass=True``
    marks a separate ∅ call (LOW_RESOURCE / EF): only ``inner.edit_unconditional`` applies (P2Plus' τ_u;
    identity for P2P), nothing is recorded, and the value path keeps the plain context.
    """

    def __init__(self, inner: AttentionController, num_branches: int, explicit_everywhere: bool = True) -> None:
        super().__init__(num_branches)
        self.inner = inner
        self.unconditional_pass = False
        self.explicit_everywhere = explicit_everywhere

    def bind(self, layers) -> None:
        super().bind(layers)
        self.inner.bind(layers)

    def needs_probabilities(self, layer) -> bool:
        return self.explicit_everywhere or self.inner.needs_probabilities(layer)

    def value_context(self, context, layer):
        return context if self.unconditional_pass else self.inner.value_context(context, layer)

    def process(self, probs, layer):
        if not self.inner.needs_probabilities(layer):
            return probs
        if self.unconditional_pass:
            return self.inner.edit_unconditional(probs, layer)
        return self.inner.process(probs, layer)


def reference_store(pipe, num_branches: int) -> AttentionStore:
    """P2P's AttentionStore as the references register it (cross and self maps ≤ 32² at SD size)."""
    return AttentionStore(num_branches, max_resolution=sd_equivalent_resolution(pipe.unet, STORE_SD_RESOLUTION),
                          record_self=True)


def separate_cfg(pipe, proxy: ReferenceAttention | None, latents, t, cond, uncond, scale) -> torch.Tensor:
    """ε̂ from two UNet calls, ∅ then c (the references' separate passes)."""
    if proxy is not None:
        proxy.unconditional_pass = True
    try:
        eps_uncond = pipe.unet_eps(latents, t, uncond)
    finally:
        if proxy is not None:
            proxy.unconditional_pass = False
    eps_cond = pipe.unet_eps(latents, t, cond)
    return classifier_free_guidance(eps_uncond, eps_cond, scale)


def batched_cfg(pipe, latents, t, cond, uncond, scale) -> torch.Tensor:
    """ε̂ from one UNet call on [∅…, c…] (P2P/NTI notebooks, LOW_RESOURCE=False; diffusers)."""
    eps_uncond, eps_cond = pipe.unet_eps(torch.cat([latents, latents]), t, torch.cat([uncond, cond])).chunk(2)
    return classifier_free_guidance(eps_uncond, eps_cond, scale)
