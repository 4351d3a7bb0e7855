"""Shared pieces of the metric implementations: image conversions and item predicates.

Image conventions: ``MetricInput`` images are (3, H, W) in [-1, 1] at the model resolution and come
from 8-bit PNGs, so ``bench.images.to_uint8`` (round((x + 1)·127.5)) recovers the exact stored bytes that the
references read with ``np.array(Image.open(...))``.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from PIL import Image

from bench.metrics.base import MetricInput

NAN = math.nan


def to_unit(image: torch.Tensor) -> torch.Tensor:
    """[-1, 1] → [0, 1] (x + 1) / 2."""
    return (image.float() + 1.0) / 2.0


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
