"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024); docs/methods.md#presets.

Reference: inbarhub/DDPM_inversion @ 58fc881 (`main_run.py` mode `our_inv`, `ddm_inversion/inversion_utils.py`).
x_0 is noised *independently* at every grid step, x̃_n = √ᾱ_{t_n} x_0 + √(1−ᾱ_{t_n}) ε_n with fresh
ε_n (`sample_xts_from_x0` L32-56; noise drawn for ascending t, from the invert generator), then the
shared loop of ``methods.ddpm_noise_space`` extracts z and edits from x̃_{T−T_skip}.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from methods.ddpm_noise_space import DDPMNoiseSpaceMethod
from methods.steps import gaussian_like, q_sample


@dataclass
class EFDDPM(DDPMNoiseSpaceMethod):
    name = "ef_ddpm"
    version = "1"

    def noise_trajectory(self, scheduler, x0, generator) -> list[torch.Tensor]:
        return [x0] + [q_sample(scheduler, x0, int(t), gaussian_like(x0, generator))
                       for t in scheduler.timesteps.flip(0)]
