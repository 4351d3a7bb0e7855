"""Several items' attention controllers over one UNet batch (item batching).

With B items of k_b branches each, a guided UNet batch holds the rows
[∅ rows of item 1 … item B | c rows of item 1 … item B], each block item-major (item b's branches
are consecutive), and a conditional-only batch holds the c block alone. ``ItemBatchController``
hands every item's controller exactly the rows, in exactly the layout, it sees when its item runs
alone, so per-item state — word mappers, LocalBlend masks, reweighting, step counters — stays per
item and an item's edit does not depend on which items share its batch.
"""

from __future__ import annotations

from typing import Sequence

import torch

from methods.p2p.layers import AttentionLayer
from methods.p2p.store import AttentionController


class ItemBatchController(AttentionController):
    """Routes each item's rows of every attention call (and of the latents) to that item's controller."""

    def __init__(self, controllers: Sequence[AttentionController]) -> None:
        if not controllers:
            raise ValueError("ItemBatchController needs at least one item controller")
        self.controllers = list(controllers)
        self.rows = [controller.num_branches for controller in self.controllers]
        super().__init__(sum(self.rows))

    def bind(self, layers: dict[str, AttentionLayer]) -> None:
        super().bind(layers)
        for controller in self.controllers:
            controller.bind(layers)

    def needs_probabilities(self, layer: AttentionLayer) -> bool:
        return any(controller.needs_probabilities(layer) for controller in self.controllers)

    def needs_unconditional_probabilities(self, layer: AttentionLayer) -> bool:
        return any(controller.needs_unconditional_probabilities(layer) for controller in self.controllers)

    # batch layout -----------------------------------------------------------------------
    def per_item(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Each item's rows in its own layout: c rows, or [∅ rows; c rows]."""
        uncond, cond = self.split_batch(tensor)
        conds = cond.split(self.rows)
        if uncond is None:
            return list(conds)
        return [torch.cat([u, c]) for u, c in zip(uncond.split(self.rows), conds)]

    def join(self, parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """The inverse of ``per_item``."""
        if parts[0].shape[0] == self.rows[0]:
            return torch.cat(list(parts))
        uncond = [part[:rows] for part, rows in zip(parts, self.rows)]
        cond = [part[rows:] for part, rows in zip(parts, self.rows)]
        return torch.cat(uncond + cond)

    # hooks ------------------------------------------------------------------------------
    def value_context(self, context: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return self.join([controller.value_context(part, layer)
                          for controller, part in zip(self.controllers, self.per_item(context))])

    def process(self, probs: torch.Tensor, layer: AttentionLayer) -> torch.Tensor:
        return self.join([controller.process(part, layer)
                          for controller, part in zip(self.controllers, self.per_item(probs))])

    def step_callback(self, latents: torch.Tensor) -> torch.Tensor:
        """``latents`` has one row per branch, item-major (no CFG rows)."""
        self.cur_step += 1
        return torch.cat([controller.step_callback(part)
                          for controller, part in zip(self.controllers, latents.split(self.rows))])


def batch_controller(controllers: Sequence[AttentionController]) -> AttentionController:
    """The controller of a UNet batch of these items: at B = 1 the item's own controller (its rows are the
    whole batch, so routing would only copy every attention map twice per layer), else an
    ``ItemBatchController`` over them."""
    if len(controllers) == 1:
        return controllers[0]
    return ItemBatchController(controllers)
