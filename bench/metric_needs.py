"""The evaluator backbones a metric config entry needs, known without importing the metric's module.

Metric modules import torch and torchvision (seconds), and a job's preflight must list what is missing
before that (bench/preflight.py). Each metric class builds its backbones in ``__init__`` from its
config keys; ``DECLARED`` states the same for the metric classes of the shipped metric sets
(tests/test_preflight.py checks every entry of every conf/metrics set against ``Metric.backbones()``,
defaults included). A class not listed here is built and asked (correct, only slower).
"""

from __future__ import annotations

from typing import Any, Callable

from bench.metrics.backbones import Backbone, HfClipBackbone, LpipsBackbone, OpenClipBackbone, TimmVitBackbone
from bench.static_classes import class_constant


def _lpips(net: str | None, default_net: str = "alex", flavor: str = "lpips") -> Callable[[dict], list[Backbone]]:
    """LPIPS on a torchvision classifier: the entry's ``net`` (when the class takes one) and ``backbone_path``."""
    return lambda e: [LpipsBackbone(net=e.get("net", default_net) if net is None else net,
                                    path=e.get("backbone_path"), flavor=flavor)]


def _open_clip(default_model: str) -> Callable[[dict], list[Backbone]]:
    return lambda e: [OpenClipBackbone(model=e.get("model", default_model), pretrained=e.get("pretrained", "openai"),
                                       checkpoint=e.get("checkpoint"), model_config=e.get("model_config"),
                                       cache_dir=e.get("cache_dir"))]


def _hf_clip(e: dict) -> list[Backbone]:
    return [HfClipBackbone(model=e.get("model", "openai/clip-vit-large-patch14"), revision=e.get("revision"),
                           cache_dir=e.get("cache_dir"))]


def _timm(e: dict) -> list[Backbone]:
    return [TimmVitBackbone(model=e.get("model", "vit_base_patch8_224.dino"), checkpoint=e.get("checkpoint"),
                            model_kwargs=e.get("model_kwargs"), model_kwargs_json=e.get("model_kwargs_json"))]


def _none(e: dict) -> list[Backbone]:
    return []  # a formula, or weights the metric resolves itself (the toy-world metrics' committed files)


DECLARED: dict[str, Callable[[dict], list[Backbone]]] = {
    "bench.metrics.lpips_metrics.LpipsDistance": _lpips(None),
    "bench.metrics.lpips_metrics.ReconLpips": _lpips(None),
    "bench.metrics.lpips_metrics.NsLpipsGt": _lpips("alex"),
    "bench.metrics.lpips_metrics.NsLpipsSd": _lpips("alex"),
    "bench.metrics.pie_background.BgLpipsPie": _lpips(None, default_net="squeeze", flavor="torchmetrics"),
    "bench.metrics.clip_metrics.ClipScore": _open_clip("ViT-L-14"),
    "bench.metrics.clipscore_hessel.ClipScoreHessel": _open_clip("ViT-B-32"),
    "bench.metrics.clip_metrics.ClipScorePie": _hf_clip,
    "bench.metrics.clip_metrics.ClipScoreEditPie": _hf_clip,
    "bench.metrics.structure.StructureDist": _timm,
    "bench.metrics.structure.StructureDistPie": _timm,
    **dict.fromkeys(["bench.metrics.pie_background.ReconPsnr", "bench.metrics.pie_background.BgPsnrPie",
                     "bench.metrics.pie_background.BgMsePie", "bench.metrics.pie_background.BgSsimPie",
                     "bench.toyworld.metrics.GtTargetPsnr", "bench.toyworld.metrics.GtTargetLpips",
                     "bench.toyworld.metrics.BgPsnrGt", "bench.toyworld.metrics.EditAccuracy"], _none),
}


def entry_backbones(entry: Any) -> tuple[str, list[Backbone]]:
    """(metric id, its backbones) for one entry of ``bench.metrics.registry.metric_entries``."""
    target = entry.get("_target_") if isinstance(entry, dict) else None
    if target in DECLARED:
        return entry.get("id") or class_constant(target, "id"), DECLARED[target](entry)
    from bench.metrics.registry import build_metric

    metric = build_metric(entry)
    return metric.id, metric.backbones()
