"""Evaluator backbones: weight resolution, loading through each network's own library, counting.

Resolution order for every backbone (docs/metrics.md#backbones-and-weights):

1. an explicit local path from the metric config (a file, or a folder for transformers models);
2. the library's own cache: ``$TORCH_HOME/hub/checkpoints`` for torchvision backbones (LPIPS), the
   Hugging Face hub cache for open_clip / timm / transformers weights (open_clip's URL-only tags:
   ``~/.cache/clip`` or the configured ``cache_dir``);
3. a download into that same cache, only when downloads are allowed (no ``HF_HUB_OFFLINE`` /
   ``TRANSFORMERS_OFFLINE`` / ``EDITBENCH_OFFLINE`` set, and the call site asked for it).

When nothing is found a ``WeightsNotFoundError`` names the model, every path searched and the
``bench weights fetch`` command that pre-fills the caches.

Loaders (one per library, all loading with safetensors or ``torch.load(weights_only=True)``):

- ``LpipsBackbone``: ``lpips.LPIPS(net=..., pnet_rand=True)`` (linear heads shipped inside the
  package) with the torchvision backbone state dict loaded into its slices; ``flavor="torchmetrics"``
  builds torchmetrics' copy of LPIPS the same way (PIE-Bench's ``net_type='squeeze'``).
- ``OpenClipBackbone``: ``open_clip.create_model_and_transforms`` (tag or checkpoint file; a model
  config JSON is registered with ``open_clip.add_model_config``).
- ``HfClipBackbone``: transformers ``CLIPModel`` + ``CLIPProcessor`` (torchmetrics-CLIPScore semantics).
- ``TimmVitBackbone``: ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=...))``
  (DINO ViT-B/8 = ``vit_base_patch8_224.dino``, or any timm ViT given as kwargs).

``BackboneStore`` loads each backbone once and counts forward passes of the loaded networks with
forward pre-hooks (``forward_calls``; the process-wide total is ``FORWARD_CALLS``).
"""

from bench.metrics.backbones.base import (
                                          FETCH_HINT,
                                          FORWARD_CALLS,
                                          Backbone,
                                          BackboneStore,
                                          Resolved,
                                          WeightsNotFoundError,
                                          downloads_allowed,
                                          load_state_dict_file,
)
from bench.metrics.backbones.clip import HfClipBackbone, OpenClipBackbone
from bench.metrics.backbones.diffusion import PipelineSource
from bench.metrics.backbones.lpips_torchvision import LpipsBackbone, load_backbone_into_slices
from bench.metrics.backbones.timm_vit import TimmVitBackbone

__all__ = ["FETCH_HINT", "FORWARD_CALLS", "Backbone", "BackboneStore", "HfClipBackbone", "LpipsBackbone",
           "OpenClipBackbone", "PipelineSource", "Resolved", "TimmVitBackbone", "WeightsNotFoundError", "downloads_allowed",
           "load_backbone_into_slices", "load_state_dict_file"]
