"""``clipscore_hessel``: CLIPScore of Hessel et al. (EMNLP 2021), CLIP-S = w·max(cos(E_I, E_C), 0), w = 2.5.

Reference: jmhessel/clipscore@459f821 ``clipscore.py``: the caption is prefixed with "A photo depicts"
(L44, L52), the image goes through Resize(224, bicubic) + CenterCrop(224) + CLIP mean/std (L66-72, = open_clip's
preprocess for the OpenAI ViT-B/32), features are L2-normalised and CLIP-S = w·clip(cos, 0) with w = 2.5
(L110, L123-126) on ``clip.load("ViT-B/32")`` (L168).

Why it exists: StyleDiffusion's comparison table reports a "Clipscore" of 75–82 %, which fits CLIP-S ×100
(cos ≈ 0.30–0.33) and not 100·cos of ``clip_score`` (typically 20–35). The paper does not define its score;
this is an assumption stated in docs/metrics.md#clipscore-hessel. Stored value: CLIP-S in [0, w]; tables show
it ×100 (display_scale), i.e. as the paper's percentage.
"""

from __future__ import annotations

from typing import Any

from bench.metrics.base import MetricInput
from bench.metrics.clip_metrics import ClipScore


class ClipScoreHessel(ClipScore):
    """w·max(cos, 0) of open_clip embeddings, "A photo depicts" caption prefix; ViT-B/32 (OpenAI) by default."""

    id = "clipscore_hessel"
    version = "1"
    higher_is_better = True
    display_scale = 100.0  # reported as a percentage, as StyleDiffusion's table
    unit = "2.5·max(cos, 0)"

    def __init__(self, model: str = "ViT-B-32", pretrained: str | None = "openai", checkpoint: str | None = None,
                 model_config: str | None = None, cache_dir: str | None = None, w: float = 2.5,
                 prefix: str = "A photo depicts", id: str | None = None):  # noqa: A002
        super().__init__(model=model, pretrained=pretrained, checkpoint=checkpoint, model_config=model_config,
                         cache_dir=cache_dir, id=id)
        if w <= 0:
            raise ValueError(f"clipscore_hessel w={w!r}: expected a positive weight (Hessel et al.: 2.5)")
        self.w, self.prefix = float(w), prefix
        if self.w != 2.5:  # the unit names the weight: another w is another scale
            self.unit = f"{self.w:g}·max(cos, 0)"

    def config(self) -> dict[str, Any]:
        return {"library": "open_clip", "model": self.clip_backbone.model, "scale": f"{self.w:g}*max(cos, 0)",
                "text": f"{self.prefix!r} + ' ' + target_prompt" if self.prefix else "target_prompt"}

    def text(self, inp: MetricInput) -> str:
        caption = super().text(inp)
        return f"{self.prefix.rstrip()} {caption}" if self.prefix else caption

    def score(self, batch: list[MetricInput]) -> list[float]:
        return [float(v) for v in self.w * self.cosines(batch).clamp(min=0.0)]
