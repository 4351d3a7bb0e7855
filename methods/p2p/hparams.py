"""P2P editing hyperparameters shared by the P2P methods (ddim_p2p, ef_ddpm_p2p, null_text_p2p, P2Plus)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from methods.base import HyperparameterError, check_range
from methods.p2p.controller import P2P_MODES, P2PController, build_p2p_controller, step_window
from methods.p2p.item_batch import batch_controller
from methods.p2p.store import AttentionController


def _fraction_spec(owner: object, name: str):
    """Validate a replacement-steps hparam (fraction, [start, end], or {word: fraction|pair, 'default_': ...})."""
    value = getattr(owner, name)
    entries = value.values() if isinstance(value, Mapping) else [value]
    for entry in entries:
        try:
            step_window(entry if isinstance(entry, (int, float)) else tuple(entry), 1)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{type(owner).__name__}.{name}={value!r}: expected a fraction in [0, 1], a pair "
                             f"[start, end] of fractions, or a mapping of such per word ({err})") from err
    if isinstance(value, Mapping):
        return {str(k): v if isinstance(v, (int, float)) else tuple(v) for k, v in value.items()}
    return value if isinstance(value, (int, float)) else tuple(value)


OPTIONAL_CONTROL = (False, True, "if_available")  # local_blend / reweight values
DEFAULT_REWEIGHT = 2.0  # ×2 on the target blend word (PnPInversion run_editing_p2p.py:129-132; StyleDiffusion CLI)


@dataclass
class P2PEditHparams:
    """Prompt-to-Prompt edit hyperparameters (mixin for method dataclasses; all are *edit* hparams).

    cross_replace_steps: P2P ``cross_replace_steps`` (EF ``--xa``): rows [0, int(c·(N+1))) of α.
    self_replace_steps:  P2P ``self_replace_steps`` (EF ``--sa``): steps [int(N·s0), int(N·s1)).
    p2p_mode:            'auto' (replace if equal word counts else refine; EF rule), 'replace', 'refine'.
    self_replace_max_resolution: maps ≤ r² (SD sizes) get self-attention replacement (P2P 16, P2Plus 32).
    local_blend:         use LocalBlend with the item's blend_words (threshold, start fraction); "if_available":
                         only for items that have blend words (PnPInversion's PIE-Bench runs).
    reweight:            AttentionReweight with the item's ``extra["eq_params"]`` = {"words", "values"}, else ×2 on
                         the target blend word; "if_available": only for items that have either.
    """

    cross_replace_steps: float | tuple[float, float] | dict[str, float | tuple[float, float]] = 0.8
    self_replace_steps: float | tuple[float, float] = 0.4
    p2p_mode: str = "auto"
    self_replace_max_resolution: int = 16
    local_blend: bool | str = False
    blend_threshold: float = 0.3
    blend_start: float = 0.0
    reweight: bool | str = False

    def check_p2p_hparams(self) -> None:
        try:
            self.cross_replace_steps = _fraction_spec(self, "cross_replace_steps")
            self.self_replace_steps = _fraction_spec(self, "self_replace_steps")
        except ValueError as err:
            raise HyperparameterError(str(err)) from err
        if isinstance(self.self_replace_steps, dict):
            raise HyperparameterError(f"{type(self).__name__}.self_replace_steps={self.self_replace_steps!r}: "
                                      "per-word values apply to cross-attention only; use a fraction or a pair")
        if self.p2p_mode not in P2P_MODES:
            raise HyperparameterError(f"{type(self).__name__}.p2p_mode={self.p2p_mode!r}: expected one of {P2P_MODES}")
        for name in ("local_blend", "reweight"):
            if getattr(self, name) not in OPTIONAL_CONTROL:
                raise HyperparameterError(f"{type(self).__name__}.{name}={getattr(self, name)!r}: expected one of "
                                          f"{OPTIONAL_CONTROL}")
        check_range(self, "self_replace_max_resolution", 1, 4096)
        check_range(self, "blend_threshold", 0.0, 1.0)
        check_range(self, "blend_start", 0.0, 1.0)

    def p2p_controller(self, pipe, item, num_steps: int, **builder_kwargs) -> P2PController:
        """The controller for [item.source_prompt, item.target_prompt] with these hparams.

        ``builder_kwargs`` go to ``build_p2p_controller`` (``controller_class`` and its extra arguments,
        e.g. StyleDiffusion's P2Plus controller)."""
        blend_words = tuple(item.blend_words) if self.local_blend and item.blend_words is not None else None
        if self.local_blend is True and blend_words is None:
            raise ValueError(f"{type(self).__name__}.local_blend=True but item {item.item_id!r} has no blend_words")
        eq_params = None
        if self.reweight:
            eq_params = item.extra.get("eq_params") or (
                {"words": [item.blend_words[1]], "values": [DEFAULT_REWEIGHT]} if item.blend_words else None)
            if self.reweight is True and not eq_params:
                raise ValueError(f"{type(self).__name__}.reweight=True but item {item.item_id!r} has neither "
                                 "extra['eq_params'] = {'words': [...], 'values': [...]} nor blend_words")
        return build_p2p_controller(
            pipe, item.source_prompt, item.target_prompt, num_steps, self.cross_replace_steps, self.self_replace_steps,
            mode=self.p2p_mode, self_max_sd_resolution=self.self_replace_max_resolution, blend_words=blend_words,
            blend_threshold=self.blend_threshold, blend_start=self.blend_start, equalizer_params=eq_params,
            **builder_kwargs,
        )

    def p2p_batch_controller(self, pipe, items, num_steps: int, **builder_kwargs) -> AttentionController:
        """One ``p2p_controller`` per item, routed by ``batch_controller`` (item-major [source, target] rows)."""
        return batch_controller([self.p2p_controller(pipe, item, num_steps, **builder_kwargs) for item in items])
