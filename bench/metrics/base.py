"""The metric contract.

A metric is instantiated from ``conf/metrics/<set>.yaml`` (a list of ``_target_`` configs). It has a
distinct ``id`` per protocol variant (e.g. ``lpips_alex`` vs ``bg_lpips_pie``), a ``version`` (bump
when scores change; part of the score cache key), ``higher_is_better``, a ``display_scale`` for
tables (×10³ → 1000.0) and the ``backbone`` it needs (None for pure formulas). ``score`` takes a
batch of ``MetricInput`` and returns one float per input (NaN where the metric does not apply, e.g.
an empty mask; tables skip NaN and report the count).

Images are tensors in [-1, 1], shape (3, H, W), at the model resolution: the source is exactly the
preprocessed crop that was fed to the model, never the original file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from bench.data.item import EditItem


@dataclass
class MetricInput:
    source: torch.Tensor  # (3, H, W) in [-1, 1]
    edited: torch.Tensor  # (3, H, W) in [-1, 1]
    item: EditItem
    mask: torch.Tensor | None = None  # (H, W) in [0, 1], 1 = edited region (ground truth), if the item has one
    target_image: torch.Tensor | None = None  # (3, H, W) ground-truth edit (toy world), if any
    record: dict[str, Any] = field(default_factory=dict)  # the edit record (method, hparams, ...)


class Metric:
    id: ClassVar[str] = "metric"
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[bool] = True
    display_scale: ClassVar[float] = 1.0
    unit: ClassVar[str] = ""  # what one stored value is (e.g. "dB", "100·cos"); paper CSV rows must match it
    backbone: str | None = None

    def score(self, batch: list[MetricInput]) -> list[float]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "higher_is_better": self.higher_is_better,
                "display_scale": self.display_scale, "unit": self.unit, "backbone": self.backbone}
