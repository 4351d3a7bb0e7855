"""Ground-truth metrics of the toy world (``conf/metrics/toy_ground_truth.yaml``).

Every toy item has a pixel-exact target image and its edit region (``MetricInput.target_image`` and
``MetricInput.mask``), so these metrics score an edit against the truth instead of proxies:

- ``gt_target_psnr``: PSNR (dB, [0, 1] range) between the edited image and the true target.
- ``gt_target_lpips``: LPIPS (AlexNet layout, toy AlexNet features, lpips' linear heads) between the
  edited image and the true target.
- ``bg_psnr_gt``: PSNR over the pixels the edit must not change (mask == 0: outside the shape(s) for
  colour / shape edits, the shape itself for background edits), against the true target (which
  equals the source there).
- ``edit_accuracy``: 1.0 when the toy evaluator CLIP reads the edited image as exactly the target
  caption's (colour, shape, background) — the edited attribute at its new value and the other two
  unchanged — else 0.0.

Metrics return NaN for inputs they do not apply to (no target image / mask, a prompt that is not a
toy caption). PSNR is capped at 100 dB (MSE floor 1e-10) so identical images do not give inf.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from bench.fingerprint import file_sha256
from bench.images import psnr
from bench.metrics.base import Metric, MetricInput
from bench.toyworld.generator import ATTRIBUTE_VALUES

NAN = math.nan
MAX_DB = 100.0  # PSNR cap for exact matches (MSE floor 1e-10 on the [0, 1] scale)
_CACHE: dict[tuple, Any] = {}


def parse_caption(prompt: str) -> tuple[int, int, int]:
    """"a <colour> <shape> on a <background> background" → attribute indices; ValueError otherwise."""
    words = prompt.strip().lower().split()
    if len(words) != 7 or words[0] != "a" or words[3:5] != ["on", "a"] or words[6] != "background":
        raise ValueError(f"not a toy caption: {prompt!r}")
    try:
        return (ATTRIBUTE_VALUES["colour"].index(words[1]), ATTRIBUTE_VALUES["shape"].index(words[2]),
                ATTRIBUTE_VALUES["background"].index(words[5]))
    except ValueError:
        raise ValueError(f"not a toy caption (unknown attribute word): {prompt!r}") from None


def _default_evaluators() -> str:
    from bench.toyworld.evaluators import EVALUATORS_DIR

    return str(EVALUATORS_DIR)


class _ToyMetric(Metric):
    """Toy metrics load their committed evaluator file themselves; ``weights_identity`` (its sha256)
    stands for the backbone identity in scores and keys."""

    weights_identity: str | None = None

    @property
    def backbone(self) -> str | None:
        return self.weights_identity


class GtTargetPsnr(_ToyMetric):
    id = "gt_target_psnr"
    version = "1"
    higher_is_better = True

    def score(self, batch: list[MetricInput]) -> list[float]:
        return [NAN if inp.target_image is None else float(psnr(inp.edited, inp.target_image, max_db=MAX_DB)) for inp in batch]


class BgPsnrGt(_ToyMetric):
    id = "bg_psnr_gt"
    version = "1"
    higher_is_better = True

    def score(self, batch: list[MetricInput]) -> list[float]:
        out = []
        for inp in batch:
            if inp.target_image is None or inp.mask is None:
                out.append(NAN)
                continue
            keep = (inp.mask.detach().float().cpu() <= 0.5 / 255).float()  # exactly unedited pixels
            out.append(float(psnr(inp.edited, inp.target_image, keep, max_db=MAX_DB)))
        return out


class GtTargetLpips(_ToyMetric):
    """LPIPS(edited, true target) with the toy AlexNet features in lpips' AlexNet slices."""

    id = "gt_target_lpips"
    version = "1"
    higher_is_better = False
    display_scale = 1000.0

    def __init__(self, backbone_path: str | None = None, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.backbone_path = Path(backbone_path or Path(_default_evaluators()) / "toy-alexnet.safetensors")
        self.weights_identity = f"toy-alexnet:sha256={file_sha256(self.backbone_path)[:12]}" if self.backbone_path.is_file() else None

    def model(self):
        key = ("lpips", str(self.backbone_path))
        if key not in _CACHE:
            _CACHE[key] = load_toy_lpips(self.backbone_path)
        return _CACHE[key]

    @torch.no_grad()
    def score(self, batch: list[MetricInput]) -> list[float]:
        out = [NAN] * len(batch)
        rows = [k for k, inp in enumerate(batch) if inp.target_image is not None]
        if rows:
            edited = torch.stack([batch[k].edited.float().cpu().clamp(-1, 1) for k in rows])
            target = torch.stack([batch[k].target_image.float().cpu().clamp(-1, 1) for k in rows])
            values = self.model()(edited, target).flatten()
            for k, value in zip(rows, values.tolist()):
                out[k] = float(value)
        return out


def load_toy_lpips(path: str | Path):
    """``lpips.LPIPS(net='alex')`` (package linear heads, no download) with the toy AlexNet features."""
    import lpips
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"toy AlexNet weights not found: {path} (bench toy train --stage eval_alex)")
    model = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    loaded = set()
    for name, module in model.net.named_children():  # slice1..slice5, children named by torchvision index
        if not name.startswith("slice"):
            continue
        for index, layer in module.named_children():
            for param_name, param in layer.named_parameters(recurse=False):
                key = f"features.{index}.{param_name}"
                if key not in state:
                    raise KeyError(f"{path}: missing {key} (expected a torchvision alexnet() state dict)")
                param.data.copy_(state[key])
                loaded.add(key)
    if not loaded:
        raise RuntimeError("lpips AlexNet slices not found; lpips layout changed")
    return model.eval().requires_grad_(False)


class EditAccuracy(_ToyMetric):
    """1.0 when the toy CLIP classifies the edited image as the target caption's three attributes."""

    id = "edit_accuracy"
    version = "1"
    higher_is_better = True

    def __init__(self, evaluators: str | None = None, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.evaluators = Path(evaluators or _default_evaluators())
        weights = self.evaluators / "toy-clip.safetensors"
        self.weights_identity = f"toy-clip:sha256={file_sha256(weights)[:12]}" if weights.is_file() else None

    def classifier(self):
        from bench.toyworld.evaluators import load_clip_classifier

        key = ("clip", str(self.evaluators))
        if key not in _CACHE:
            _CACHE[key] = load_clip_classifier(self.evaluators)
        return _CACHE[key]

    def score(self, batch: list[MetricInput]) -> list[float]:
        out = [NAN] * len(batch)
        rows, targets = [], []
        for k, inp in enumerate(batch):
            try:
                targets.append(parse_caption(inp.item.target_prompt))
            except ValueError:
                continue
            rows.append(k)
        if rows:
            images = torch.stack([batch[k].edited.float().cpu().clamp(-1, 1) for k in rows])
            predicted = self.classifier().classify(images)
            for k, pred, target in zip(rows, predicted.tolist(), targets):
                out[k] = 1.0 if tuple(pred) == tuple(target) else 0.0
        return out
