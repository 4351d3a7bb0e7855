"""Method ↔ reference-shaped baseline pairs for ``bench perf`` (opt-in per exact class).

A method class gets a baseline only by registering a builder in ``reference_loop_builders``; a
subclass never inherits its parent's (its output may differ), and ``bench perf`` reports a method
without one as having "no reference-shaped loop".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from bench.perf.reference_loops import (
    ddim_p2p_reference,
    ddim_reference,
    ef_reference,
    null_text_reference,
    sdedit_reference,
    stylediffusion_reference,
)

NO_REFERENCE_LOOP = "no reference-shaped loop"  # what bench perf reports for a method without one

@dataclass
class Pair:
    """A method run and its reference-shaped baseline, both ``(pipe, image, item) -> tensor``."""

    method_run: Callable
    reference_run: Callable
    compares: str  # what the tensors are ("final latents" or "decoded image")


def reference_loop_builders() -> dict[type, Callable]:
    """The methods that opted in to a reference-shaped baseline: exact class → ``(method, label, generators)
    -> Pair``. Keyed by the exact class, so a subclass (a new method built on DDIM + P2P, say) never
    inherits its parent's baseline: it has none until it registers one here."""
    from bench.perf.reference_inversion_p2p import direct_inversion_reference, negative_prompt_reference
    from methods.ddim import DDIM
    from methods.ddim_p2p import DDIMP2P
    from methods.ddpm_naive import NaiveDDPM
    from methods.direct_inversion_p2p import DirectInversionP2P
    from methods.ef_ddpm import EFDDPM
    from methods.ef_ddpm_p2p import EFDDPMP2P
    from methods.negative_prompt_p2p import NegativePromptP2P
    from methods.null_text_p2p import NullTextP2P
    from methods.sdedit import SDEdit
    from methods.stylediffusion_p2plus import StyleDiffusionP2Plus

    def latents_pair(reference: Callable) -> Callable:
        return lambda method, label, generators: Pair(
            lambda pipe, image, item: method_latents(method, generators, pipe, image, item),
            lambda pipe, image, item: reference(pipe, method, image, item, label), "final latents")

    def ef_pair(method, label, generators):
        return Pair(lambda pipe, image, item: method_latents(method, generators, pipe, image, item),
                    lambda pipe, image, item: ef_reference(pipe, method, image, item, label, generators()[0]),
                    "final latents")

    def sdedit_pair(method, label, generators):
        def method_image(pipe, image, item):
            g_invert, g_edit = generators()
            return method.edit(pipe, method.invert(pipe, image, item.source_prompt, g_invert), item, g_edit)

        return Pair(method_image, lambda pipe, image, item: sdedit_reference(pipe, method, image, item, label,
                                                                             *generators()[::-1]), "decoded image")

    def stylediffusion_pair(method, label, generators):
        return Pair(lambda pipe, image, item: method_latents(method, generators, pipe, image, item),
                    lambda pipe, image, item: stylediffusion_reference(pipe, method, image, item, label,
                                                                       generators()[0]), "final latents")

    return {SDEdit: sdedit_pair, EFDDPM: ef_pair, NaiveDDPM: ef_pair, EFDDPMP2P: ef_pair,
            DDIM: latents_pair(ddim_reference), DDIMP2P: latents_pair(ddim_p2p_reference),
            NullTextP2P: latents_pair(null_text_reference), StyleDiffusionP2Plus: stylediffusion_pair,
            NegativePromptP2P: latents_pair(negative_prompt_reference),
            DirectInversionP2P: latents_pair(direct_inversion_reference)}


def method_latents(method, generators: Callable, pipe, image, item) -> torch.Tensor:
    g_invert, _ = generators()
    return method.edit_latents(pipe, method.invert(pipe, image, item.source_prompt, g_invert), item)


def pair_for(method, label: str, seed: int = 0) -> Pair | None:
    """The method/baseline pair, or None when the method's exact class has no reference-shaped loop
    (``reference_loop_builders``; ``bench perf`` then reports "no reference-shaped loop").

    Both sides get generators seeded identically (inversion: ``seed``, edit: ``seed + 1``)."""
    builder = reference_loop_builders().get(type(method))
    if builder is None:
        return None

    def generators():
        return torch.Generator("cpu").manual_seed(seed), torch.Generator("cpu").manual_seed(seed + 1)

    return builder(method, label, generators)
