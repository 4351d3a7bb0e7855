"""CLIP score family: ``clip_score`` (open_clip), ``clip_score_pie`` and ``clip_score_edit_pie``.

Sources: docs/metrics.md ("The metrics"; CLIPScore of Hessel et al. is ``bench.metrics.clipscore_hessel``).

- ``clip_score``: open_clip model + pretrained tag (or a local checkpoint / model config JSON),
  image through the model's own eval preprocess (PIL), target prompt through ``get_tokenizer``;
  value = 100·cos(image, text), **not clipped** (negative values are kept).
- ``clip_score_pie``: torchmetrics ``CLIPScore("openai/clip-vit-large-patch14")`` semantics as
  PIE-Bench uses it (``matrics_calculator.py`` L274, L290-302): uint8 CHW image → ``CLIPProcessor``
  (resize/crop 224), text through the processor with padding and truncation to the model's
  maximum positions, value = max(100·cos, 0) per image. torchmetrics 1.9's own ``CLIPScore`` cannot
  run with transformers 5 (``get_image_features`` now returns a ``ModelOutput``, not a tensor), so
  the same steps are written out here with the transformers model and processor.
- ``clip_score_edit_pie``: PIE-Bench's ``clip_similarity_target_image_edit_part``: the edited image
  multiplied by the edit mask (``np.uint8(img * mask)``: black outside the edit region), same score;
  NaN when the mask is empty (``evaluate.py``).
"""

from __future__ import annotations

from typing import Any

import torch

from bench.images import to_pil, to_uint8
from bench.metrics.backbones import HfClipBackbone, OpenClipBackbone
from bench.metrics.base import Metric, MetricInput
from bench.metrics.common import NAN, strip_brackets


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns a ModelOutput from get_*_features (the projected embedding is its
    ``pooler_output``); transformers 4 returned the tensor itself."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class ClipScore(Metric):
    """100·cos(open_clip image embedding, text embedding) of the edited image and the target prompt."""

    id = "clip_score"
    version = "1"
    unit = "100·cos"
    higher_is_better = True
    display_scale = 1.0

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = "openai", checkpoint: str | None = None,
                 model_config: str | None = None, cache_dir: str | None = None, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.clip_backbone = OpenClipBackbone(model=model, pretrained=pretrained, checkpoint=checkpoint,
                                              model_config=model_config, cache_dir=cache_dir)

    def backbones(self):
        return [self.clip_backbone]

    def config(self) -> dict[str, Any]:
        return {"library": "open_clip", "model": self.clip_backbone.model, "scale": "100*cos, unclipped",
                "text": "target_prompt"}

    def text(self, inp: MetricInput) -> str:
        return strip_brackets(inp.item.target_prompt)

    def score(self, batch: list[MetricInput]) -> list[float]:
        return [float(v) for v in 100.0 * self.cosines(batch)]

    def cosines(self, batch: list[MetricInput]) -> torch.Tensor:
        """cos(image embedding, text embedding) per input, on the CPU."""
        model, preprocess, tokenizer = self.load(self.clip_backbone)
        images = torch.stack([preprocess(to_pil(inp.edited)) for inp in batch]).to(self.device)
        texts = tokenizer([self.text(inp) for inp in batch]).to(self.device)
        with torch.no_grad():
            image_features = model.encode_image(images).float()
            text_features = model.encode_text(texts).float()
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        return (image_features * text_features).sum(-1).cpu()


class ClipScorePie(Metric):
    """torchmetrics-CLIPScore semantics (PIE-Bench): max(100·cos, 0), ViT-L/14 by default."""

    id = "clip_score_pie"
    version = "1"
    unit = "max(100·cos, 0)"
    higher_is_better = True
    display_scale = 1.0

    def __init__(self, model: str = "openai/clip-vit-large-patch14", revision: str | None = None,
                 cache_dir: str | None = None, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.clip_backbone = HfClipBackbone(model=model, revision=revision, cache_dir=cache_dir)

    def backbones(self):
        return [self.clip_backbone]

    def config(self) -> dict[str, Any]:
        return {"library": "transformers (torchmetrics CLIPScore semantics)", "model": self.clip_backbone.model,
                "scale": "max(100*cos, 0)", "text": "target_prompt without [ ]", "image": self.image_kind}

    image_kind = "edited image (uint8)"

    def image_for(self, inp: MetricInput) -> torch.Tensor | None:
        """uint8 (3, H, W), or None when the metric does not apply to this input."""
        return to_uint8(inp.edited)

    def score(self, batch: list[MetricInput]) -> list[float]:
        values = [NAN] * len(batch)
        todo = [(i, img) for i, img in ((i, self.image_for(inp)) for i, inp in enumerate(batch)) if img is not None]
        if not todo:
            return values
        model, processor = self.load(self.clip_backbone)
        texts = [strip_brackets(batch[i].item.target_prompt) for i, _ in todo]
        pixels = processor(images=[img for _, img in todo], return_tensors="pt")["pixel_values"]
        tokens = processor(text=texts, return_tensors="pt", padding=True)
        max_len = model.config.text_config.max_position_embeddings
        input_ids, attention = tokens["input_ids"][..., :max_len], tokens["attention_mask"][..., :max_len]
        with torch.no_grad():
            img_f = _features(model.get_image_features(pixel_values=pixels.to(self.device))).float()
            txt_f = _features(model.get_text_features(input_ids=input_ids.to(self.device),
                                                      attention_mask=attention.to(self.device))).float()
        img_f = img_f / img_f.norm(p=2, dim=-1, keepdim=True)
        txt_f = txt_f / txt_f.norm(p=2, dim=-1, keepdim=True)
        scores = (100.0 * (img_f * txt_f).sum(-1)).clamp(min=0.0).cpu()  # max(100·cos, 0)
        for (i, _), v in zip(todo, scores):
            values[i] = float(v)
        return values


class ClipScoreEditPie(ClipScorePie):
    """PIE-Bench "CLIP edited": CLIPScore of ``uint8(edited · mask)`` vs the target prompt; NaN if no mask."""

    id = "clip_score_edit_pie"
    image_kind = "uint8(edited * edit mask)"

    def image_for(self, inp: MetricInput) -> torch.Tensor | None:
        if inp.mask is None or float(inp.mask.sum()) == 0:
            return None
        masked = to_uint8(inp.edited).double() * inp.mask.double().cpu()[None]
        return masked.to(torch.uint8)  # np.uint8(img * mask): truncation toward zero
