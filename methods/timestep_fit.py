"""The per-timestep inner optimisation of Null-text inversion and StyleDiffusion, for B items at once.

At step i (t = timesteps[i]) the references run, per image, a fresh Adam(lr_i) over that step's parameters
(NTI: ∅; StyleDiffusion: the mapping network M_i) and up to ``budget`` iterations of: compute the loss,
take one Adam step, stop if the loss < ε + i·2e-5 (PnPInversion `models/p2p/inversion.py` L113-241,
docs/methods.md#null-text-inversion-and-stylediffusion).

``optimise_items`` runs that loop for B items together: every item has its own parameters and its own Adam
(its own moments and step count), each iteration makes one forward over the items still running (one UNet
call with their rows) and one backward of Σ_b loss_b. The UNet rows do not interact (per-sample norms and
attention), so ∂(Σ_b loss_b)/∂θ_b = ∂loss_b/∂θ_b: each item gets the gradient it gets alone. An item whose
loss fell below the threshold leaves the batch after that iteration's step: it is neither in later forwards
nor stepped again, so its parameters stay exactly where its own loop stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F


def adam_learning_rate(step_index: int) -> float:
    """lr_i = 1e-2 · (1 − i/100) (NTI and StyleDiffusion references)."""
    return 1e-2 * (1.0 - step_index / 100.0)


def early_stop_threshold(epsilon: float, step_index: int) -> float:
    """Stop the inner loop of step i once loss < ε + i·2e-5 (NTI and StyleDiffusion references)."""
    return epsilon + step_index * 2e-5


@dataclass
class TimestepFit:
    """What one item's inner optimisation did at one timestep."""

    iterations: int  # Adam steps actually taken (≤ the budget; fewer when the early stop fired)
    initial_loss: float  # the loss of the first iteration (before any update at this timestep)
    final_loss: float  # the loss of the last iteration (the one tested against the threshold)


def optimise_items(parameters: Sequence[Iterable[torch.Tensor]],
                   item_losses: Callable[[list[int]], torch.Tensor], step_index: int, budget: int,
                   epsilon: float) -> list[TimestepFit]:
    """The reference inner loop for B items (module doc). ``parameters[b]``: item b's leaf tensors;
    ``item_losses(active)`` → the losses (len(active),) of the items ``active`` (indices into 0..B−1,
    ascending), loss_b depending on item b's parameters only. Returns each item's fit."""
    optimisers = [torch.optim.Adam(list(params), lr=adam_learning_rate(step_index)) for params in parameters]
    threshold = early_stop_threshold(epsilon, step_index)
    initial: dict[int, float] = {}
    fits: dict[int, TimestepFit] = {}
    active = list(range(len(optimisers)))
    for iteration in range(1, budget + 1):
        losses = item_losses(active)
        if losses.shape != (len(active),):
            raise ValueError(f"optimise_items: item_losses returned shape {tuple(losses.shape)} for "
                             f"{len(active)} active items; expected ({len(active)},)")
        for b in active:
            optimisers[b].zero_grad()
        losses.sum().backward()
        for b in active:
            optimisers[b].step()
        running = []
        for b, value in zip(active, losses.tolist()):
            initial.setdefault(b, value)
            fits[b] = TimestepFit(iteration, initial[b], value)
            if not value < threshold:
                running.append(b)
        active = running
        if not active:
            break
    return [fits[b] for b in range(len(optimisers))]


def optimise_timestep(parameters: Iterable[torch.Tensor], loss_fn: Callable[[], torch.Tensor], step_index: int,
                      budget: int, epsilon: float) -> TimestepFit:
    """``optimise_items`` for one item whose ``loss_fn()`` returns its scalar loss."""
    return optimise_items([parameters], lambda active: loss_fn().reshape(1), step_index, budget, epsilon)[0]


def per_item_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(A,) mean squared errors, row a = MSE(prediction[a], target[a]) (each row as F.mse_loss at B = 1)."""
    return torch.stack([F.mse_loss(p, q) for p, q in zip(prediction, target, strict=True)])


def item_rows(tensor: torch.Tensor, items: list[int]) -> torch.Tensor:
    """The rows of ``items`` of a (B, …) tensor (all of it when every item is there)."""
    return tensor if items == list(range(tensor.shape[0])) else tensor[items]


def item_fit_meta(fits: list[list[TimestepFit]], item: int) -> dict[str, list]:
    """Inversion.meta entries of one item (``fits[i][item]``: its fit at step i): per-step iterations, final
    and initial losses."""
    own = [step[item] for step in fits]
    return {"iterations": [f.iterations for f in own], "losses": [f.final_loss for f in own],
            "initial_losses": [f.initial_loss for f in own]}
