"""timm ViT backbones (DINO ViT-B/8 for Structure-dist, or any timm ViT given as kwargs)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from bench.fingerprint import file_fingerprint
from bench.metrics.backbones.base import Backbone, Resolved, WeightsNotFoundError, explicit_path, hf_cached_file
from bench.weight_locations import hf_cache_dir, timm_hub_id

if TYPE_CHECKING:
    import torch


class TimmVitBackbone(Backbone):
    kind = "timm"

    def __init__(self, model: str = "vit_base_patch8_224.dino", checkpoint: str | None = None,
                 model_kwargs: dict[str, Any] | None = None, model_kwargs_json: str | None = None):
        self.model, self.checkpoint = model, checkpoint
        self.model_kwargs_json = model_kwargs_json
        self._inline_kwargs = dict(model_kwargs or {})

    @property
    def model_kwargs(self) -> dict[str, Any]:
        """timm.create_model kwargs: the JSON file's (if any) updated by the inline ones."""
        kwargs: dict[str, Any] = {}
        if self.model_kwargs_json:
            path = explicit_path(self.model_kwargs_json)
            if not path.is_file():
                raise WeightsNotFoundError(f"timm kwargs JSON for {self.model!r} not found: {path}")
            kwargs.update(json.loads(path.read_text(encoding="utf-8")))
        kwargs.update(self._inline_kwargs)
        return kwargs

    def key(self) -> tuple:
        return (self.kind, self.model, str(self.checkpoint or ""), str(self.model_kwargs_json or ""),
                json.dumps(self._inline_kwargs, sort_keys=True))

    def describe(self) -> str:
        return f"timm {self.model!r}" + (f" (checkpoint {self.checkpoint})" if self.checkpoint else "")

    def _hub_id(self) -> str | None:
        return timm_hub_id(self.model)

    _HUB_FILES = ("model.safetensors", "pytorch_model.bin")

    def searched(self) -> list[str]:
        if self.checkpoint:
            return [f"configured checkpoint {self.checkpoint}"]
        hub = self._hub_id()
        return [f"Hugging Face cache {hf_cache_dir()} (repo {hub}, {' or '.join(self._HUB_FILES)})" if hub
                else f"(timm has no hub weights for {self.model!r}: set `checkpoint`)"]

    def find(self) -> Resolved | None:
        if self.checkpoint:
            path = explicit_path(self.checkpoint)
            if not path.is_file():
                raise self.missing("the configured checkpoint does not exist")
            return Resolved(str(path), "config", f"timm:{self.model}:sha256={file_fingerprint(path)}")
        hub = self._hub_id()
        found = hf_cached_file(hub, self._HUB_FILES) if hub else None
        return Resolved(found, "cache", f"timm:{self.model}") if found else None

    def download(self) -> Resolved:
        from huggingface_hub import hf_hub_download

        hub = self._hub_id()
        if not hub:
            raise RuntimeError(f"timm has no hub weights for {self.model!r}")
        last: Exception | None = None
        for name in self._HUB_FILES:
            try:
                return Resolved(hf_hub_download(hub, name), "download", f"timm:{self.model}")
            except Exception as err:  # try the next file name
                last = err
        raise RuntimeError(f"no weights file in {hub}: {last}")

    def load(self, resolved: Resolved, device) -> torch.nn.Module:
        import timm

        model = timm.create_model(self.model, pretrained=True, pretrained_cfg_overlay=dict(file=resolved.path),
                                  **self.model_kwargs)
        return model.to(device).eval().requires_grad_(False)
