"""The metric contract.

A metric is instantiated from ``conf/metrics/<set>.yaml`` (a list of ``_target_`` configs). It has a
distinct ``id`` per protocol variant (e.g. ``lpips_alex`` vs ``bg_lpips_pie``), a ``version`` (bump
when scores change; part of the score cache key), ``higher_is_better``, a ``display_scale`` for
tables (×10³ → 1000.0) and the ``backbones()`` it needs (none for pure formulas), whose weights the
metric stage resolves up front and shares through a ``BackboneStore``; ``backbone`` is their
path-independent identity. ``config()`` lists the settings that change values (recorded with each
score and part of its key). ``score`` takes a batch of ``MetricInput`` and returns one float per
input (NaN where the metric does not apply, e.g. an empty mask; tables skip NaN and report the count).

Images are tensors in [-1, 1], shape (3, H, W), at the model resolution: the source is exactly the
preprocessed crop that was fed to the model, never the original file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterable

import torch

from bench.data.item import EditItem
from bench.metrics.backbones import Backbone, BackboneStore, PipelineSource


@dataclass
class MetricInput:
    source: torch.Tensor  # (3, H, W) in [-1, 1]
    edited: torch.Tensor  # (3, H, W) in [-1, 1]
    item: EditItem
    mask: torch.Tensor | None = None  # (H, W) in [0, 1], 1 = edited region (ground truth), if the item has one
    target_image: torch.Tensor | None = None  # (3, H, W) ground-truth edit (toy world), if any
    record: dict[str, Any] = field(default_factory=dict)  # the edit record (method, hparams, ...)


class Metric:
    """The one metric base class; ``id`` may be overridden per config (a protocol variant with other
    settings gets another id)."""

    id: ClassVar[str] = "metric"
    version: ClassVar[str] = "1"
    higher_is_better: ClassVar[bool] = True
    display_scale: ClassVar[float] = 1.0
    unit: ClassVar[str] = ""  # what one stored value is (e.g. "dB", "100·cos"); paper CSV rows must match it

    def __init__(self, id: str | None = None):  # noqa: A002 (the config key is `id`)
        if id is not None:
            self.id = id  # instance attribute shadows the class default
        self.store: BackboneStore | None = None

    def score(self, batch: list[MetricInput]) -> list[float]:
        raise NotImplementedError

    # backbones ----------------------------------------------------------------------------------
    def backbones(self) -> list[Backbone]:
        """Every backbone this metric needs (resolved up front by ``check_backbones``)."""
        return []

    def bind(self, store: BackboneStore) -> "Metric":
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
    def backbone(self) -> str | None:
        """Path-independent identity of the weights (resolved lazily), e.g. 'lpips:alex:torchvision-IMAGENET1K_V1'."""
        parts = [self._store().resolve(b).identity for b in self.backbones()]
        return "+".join(parts) if parts else None

    def attach(self, results_dir: Path, pipeline: PipelineSource) -> None:
        """Called by the metric stage before scoring: the results folder (for artifacts a metric keeps,
        e.g. NS-LPIPS masks) and the job's diffusion pipeline. Default: neither is used."""

    def prepare(self, inputs: Iterable[MetricInput]) -> None:
        """Called by the metric stage once before scoring, with every input it is about to score (a
        generator: keep what you need, not the inputs), for work shared across batches (NS-LPIPS masks).
        Default: nothing."""

    def config(self) -> dict[str, Any]:
        """Settings that change values (recorded with each score and part of its key)."""
        return {}

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "version": self.version, "higher_is_better": self.higher_is_better,
                "display_scale": self.display_scale, "unit": self.unit, "backbone": self.backbone, "config": self.config()}
