"""Naive ("native") DDPM noise space — DERIVED FROM THE EF-DDPM PAPER'S DESCRIPTION, NOT REFERENCE CODE.

The reference repo has no naive mode (docs/methods.md#presets). Here x_0 is noised along the strided
forward Markov chain, x̃_n = √(ᾱ_{t_n}/ᾱ_{t_{n−1}}) x̃_{n−1} + √(1 − ᾱ_{t_n}/ᾱ_{t_{n−1}}) ε_n with
ᾱ_{t_0} := 1 and iid ε_n (so x̃_n are correlated across n as in q(x_{1:T}|x_0)), then the same z
extraction and editing loop as EF-DDPM (``methods.ddpm_noise_space``) with the same T_skip/CFG grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.ddpm_noise_space import DDPMNoiseSpaceMethod
from methods.steps import gaussian_like, q_transition


@dataclass
class NaiveDDPM(DDPMNoiseSpaceMethod):
    name = "ddpm_naive"
    version = "1"

    def noise_trajectory(self, scheduler, x0, generator) -> list[torch.Tensor]:
        xts, t_prev = [x0], None
        for t in scheduler.timesteps.flip(0):
            xts.append(q_transition(scheduler, xts[-1], t_prev, int(t), gaussian_like(x0, generator)))
            t_prev = int(t)
        return xts
