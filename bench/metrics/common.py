"""Shared pieces of the metric implementations: image conversions, backbone binding, key inputs.

Image conventions: ``MetricInput`` images are (3, H, W) in [-1, 1] at the model resolution and come
from 8-bit PNGs, so ``to_uint8`` (round((x + 1)·127.5)) recovers the exact stored bytes that the
references read with ``np.array(Image.open(...))``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from PIL import Image

from bench.metrics.backbones import Backbone, BackboneStore
from bench.metrics.base import Metric, MetricInput

NAN = math.nan


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1] (x + 1) / 2."""
    return (image.float() + 1.0) / 2.0


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """(3, H, W) in [-1, 1] → uint8 (3, H, W), round-half-to-even as the PNG writer."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8)


def to_pil(image: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(image).permute(1, 2, 0).numpy())


def pil_to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → (3, H, W) float in [0, 1] (= torchvision ``ToTensor``)."""
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()


def strip_brackets(prompt: str) -> str:
    """PIE-Bench prompts mark edited words with [ ]; its evaluation strips them (evaluate.py)."""
    return prompt.replace("[", "").replace("]", "")


def is_reconstruction(inp: MetricInput) -> bool:
    """An item whose target is its source: target prompt == source prompt, or flagged by the record."""
    if inp.record.get("reconstruction") is True or inp.item.extra.get("reconstruction") is True:
        return True
    return inp.item.target_prompt.strip() == inp.item.source_prompt.strip()


class BaseMetric(Metric):
    """A metric with an optional backbone, shared through a ``BackboneStore`` bound by the metric stage.

    ``id`` may be overridden per config (a protocol variant with other settings gets another id).
    """

    def __init__(self, id: str | None = None):  # noqa: A002 (the config key is `id`)
        if id is not None:
            self.id = id  # instance attribute shadows the class default
        self.store: BackboneStore | None = None

    # backbones ----------------------------------------------------------------------------------
    def backbones(self) -> list[Backbone]:
        """Every backbone this metric needs (resolved up front by ``check_backbones``)."""
        return []

    def bind(self, store: BackboneStore) -> "BaseMetric":
        self.store = store
        return self

    def _store(self) -> BackboneStore:
        if self.store is None:
            self.store = BackboneStore()
        return self.store

    def load(self, backbone: Backbone) -> Any:
        return self._store().get(backbone)

    @property
    def device(self) -> torch.device:
        return self._store().device

    @property
    def backbone(self) -> str | None:  # type: ignore[override]
        """Path-independent identity of the weights (resolved lazily), e.g. 'lpips:alex:torchvision-IMAGENET1K_V1'."""
        parts = [self._store().resolve(b).identity for b in self.backbones()]
        return "+".join(parts) if parts else None

    def config(self) -> dict[str, Any]:
        """Settings that change values (recorded with each score and part of its key)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "config": self.config()}
