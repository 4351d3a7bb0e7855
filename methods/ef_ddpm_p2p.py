"""Edit-friendly DDPM inversion + Prompt-to-Prompt (EF-DDPM `main_run.py` mode `p2pinv`, L98-110).

Same inversion as ``ef_ddpm``. Editing runs [source, target] from x̃_{T−T_skip} with the same zs for
both branches and per-branch guidance [cfg_src, cfg_tar]; the source branch retraces x̃ (up to the
zeroed z_1) because the controller edits only the target. Controller: replace if the prompts have
equal word counts, else refine (``p2p_mode='auto'``).

Reference quirk reproduced: the controller is built with num_steps = T (not the T−T_skip executed
steps), so with T=100, T_skip=12, xa=0.6, sa=0.2 cross-attention is replaced for the first
int(0.6·101) = 60 executed steps and self-attention for the first int(100·0.2) = 20.
"""

from __future__ import annotations

from dataclasses import dataclass

from methods.attention import P2PController, P2PEditHparams
from methods.ef_ddpm import EFDDPM


@dataclass
class EFDDPMP2P(P2PEditHparams, EFDDPM):
    name = "ef_ddpm_p2p"
    version = "1"

    cfg_tar: float = 9.0  # README: --mode p2pinv --skip 12 --cfg_tar 9
    skip: int = 12
    cross_replace_steps: float | tuple[float, float] | dict = 0.6  # EF --xa
    self_replace_steps: float | tuple[float, float] = 0.2  # EF --sa

    def __post_init__(self) -> None:
        EFDDPM.__post_init__(self)
        self.check_p2p_hparams()

    def branches(self, item) -> tuple[list[str], list[float]]:
        return [item.source_prompt, item.target_prompt], [self.cfg_src, self.cfg_tar]

    def controller(self, pipe, item) -> P2PController:
        return self.p2p_controller(pipe, item, num_steps=self.num_diffusion_steps)  # T, as the reference
