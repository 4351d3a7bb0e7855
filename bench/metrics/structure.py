"""Structure distance (Splice / PnP; PIE-Bench): ``structure_dist`` and ``structure_dist_pie``.

Source: omerbt/Splice@12e0146 ``util/losses.py`` L19-24, L74-83 and ``models/extractor.py`` L4-9,
L132-163; cure-lab/PnPInversion@f480116 ``evaluation/matrics_calculator.py`` L385-405 (docs/metrics.md#the-metrics).

    T      = Resize(224, max_size=480) then Normalize(ImageNet mean, std)     (input CHW float)
    qkv    = output of blocks[-1].attn.qkv  (the LAST block; Splice's layer_num=11 of 12)
    k      = qkv.reshape(B, tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4)[1]   (B, heads, tokens, head_dim)
    K      = k.transpose(1, 2).reshape(B, tokens, heads·head_dim)           (heads concatenated, CLS kept)
    S      = K Kᵀ / clamp(‖K‖ ‖K‖ᵀ, 1e-8)                                   (tokens × tokens cosine similarity)
    dist   = mean((S(edited) − S(source))²)                                  (F.mse_loss)

``structure_dist`` feeds [0, 1] images (Splice); ``structure_dist_pie`` feeds [0, 255] floats, the
PIE-Bench quirk (its images enter the ImageNet normalisation without /255).

DINO loader: timm ``vit_base_patch8_224.dino`` (facebookresearch DINO ViT-B/8 weights converted by
timm; same qkv layout — one Linear producing [q | k | v], each split into heads — as the torch.hub
``dino_vitb8`` model the references load). ``Resize`` uses ``antialias=False`` by default: the
torchvision releases the references ran (< 0.17) did not antialias tensor inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from bench.images import to_uint8
from bench.metrics.backbones import TimmVitBackbone
from bench.metrics.base import Metric, MetricInput

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def last_block_keys(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    """(B, tokens, heads·head_dim) keys of the last block, CLS token kept, heads concatenated."""
    attn = model.blocks[-1].attn
    captured: list[torch.Tensor] = []
    handle = attn.qkv.register_forward_hook(lambda _m, _i, out: captured.append(out))
    try:
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
    qkv = captured[-1]  # (B, tokens, 3·C)
    batch, tokens, _ = qkv.shape
    heads = attn.num_heads
    k = qkv.reshape(batch, tokens, 3, heads, -1).permute(2, 0, 3, 1, 4)[1]  # (B, heads, tokens, head_dim)
    return k.transpose(1, 2).reshape(batch, tokens, -1)


def cosine_self_similarity(keys: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(B, T, D) → (B, T, T): K Kᵀ / clamp(‖K‖ ‖K‖ᵀ, eps) (Splice's attn_cosine_sim)."""
    norms = keys.norm(dim=2, keepdim=True)
    return (keys @ keys.transpose(1, 2)) / torch.clamp(norms @ norms.transpose(1, 2), min=eps)


class StructureDist(Metric):
    """MSE between DINO last-block key self-similarity matrices of edited and source (lower = closer)."""

    id = "structure_dist"
    unit = "MSE of DINO key self-similarity"
    version = "1"
    higher_is_better = False
    display_scale = 1000.0  # PIE-Bench reports ×10³

    def __init__(self, model: str = "vit_base_patch8_224.dino", checkpoint: str | None = None,
                 model_kwargs: dict[str, Any] | None = None, model_kwargs_json: str | None = None,
                 input_range: str = "unit", resize: int = 224, max_size: int | None = 480,
                 antialias: bool = False, id: str | None = None):  # noqa: A002
        super().__init__(id)
        if input_range not in ("unit", "byte"):
            raise ValueError(f"structure_dist input_range={input_range!r}: expected 'unit' ([0,1], Splice) or "
                             "'byte' ([0,255], the PIE-Bench quirk)")
        self.input_range, self.resize, self.max_size, self.antialias = input_range, int(resize), max_size, antialias
        self.vit_backbone = TimmVitBackbone(model=model, checkpoint=checkpoint, model_kwargs=model_kwargs,
                                            model_kwargs_json=model_kwargs_json)

    def backbones(self):
        return [self.vit_backbone]

    def config(self) -> dict[str, Any]:
        return {"input_range": "[0,1]" if self.input_range == "unit" else "[0,255]", "resize": self.resize,
                "max_size": self.max_size, "antialias": self.antialias, "layer": "last", "features": "keys+CLS"}

    def transform(self, image: torch.Tensor) -> torch.Tensor:
        """(3,H,W) in [-1,1] → the reference's float CHW input → Resize(224, max_size=480) → Normalize."""
        x = to_uint8(image).float()  # the PNG bytes, as np.array(Image.open(...)).astype(float32)
        if self.input_range == "unit":
            x = x / 255.0
        x = TF.resize(x, [self.resize], interpolation=InterpolationMode.BILINEAR, max_size=self.max_size,
                      antialias=self.antialias)
        return TF.normalize(x, IMAGENET_MEAN, IMAGENET_STD)

    def self_similarity(self, images: list[torch.Tensor]) -> torch.Tensor:
        model = self.load(self.vit_backbone)
        batch = torch.stack([self.transform(img) for img in images]).to(self.device)
        return cosine_self_similarity(last_block_keys(model, batch).float())

    def score(self, batch: list[MetricInput]) -> list[float]:
        sims = self.self_similarity([inp.edited for inp in batch] + [inp.source for inp in batch])
        edited, source = sims[: len(batch)], sims[len(batch):]
        return [float(F.mse_loss(e, s)) for e, s in zip(edited, source)]


class StructureDistPie(StructureDist):
    """``structure_dist`` on [0, 255] float inputs, as PIE-Bench's evaluation feeds them."""

    id = "structure_dist_pie"

    def __init__(self, model: str = "vit_base_patch8_224.dino", checkpoint: str | None = None,
                 model_kwargs: dict[str, Any] | None = None, model_kwargs_json: str | None = None,
                 resize: int = 224, max_size: int | None = 480, antialias: bool = False,
                 id: str | None = None):  # noqa: A002
        super().__init__(model=model, checkpoint=checkpoint, model_kwargs=model_kwargs,
                         model_kwargs_json=model_kwargs_json, input_range="byte", resize=resize,
                         max_size=max_size, antialias=antialias, id=id or "structure_dist_pie")
