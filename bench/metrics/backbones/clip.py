"""CLIP backbones: open_clip (tags or checkpoint files) and transformers' ``CLIPModel``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.fingerprint import file_fingerprint, fingerprint_dir
from bench.metrics.backbones.base import Backbone, Resolved, WeightsNotFoundError, explicit_path, hf_cached_file
from bench.weight_locations import hf_cache_dir, open_clip_sources

if TYPE_CHECKING:
    import torch


# open_clip.constants.HF_WEIGHTS_NAME / HF_SAFE_WEIGHTS_NAME (tests/test_weight_locations.py checks them)
OPEN_CLIP_WEIGHTS_NAME = "open_clip_pytorch_model.bin"
OPEN_CLIP_SAFE_WEIGHTS_NAME = "open_clip_model.safetensors"


class OpenClipBackbone(Backbone):
    kind = "open_clip"

    def __init__(self, model: str = "ViT-L-14", pretrained: str | None = "openai", checkpoint: str | None = None,
                 model_config: str | None = None, cache_dir: str | None = None):
        self.model, self.pretrained, self.checkpoint = model, pretrained, checkpoint
        self.model_config, self.cache_dir = model_config, cache_dir
        if not checkpoint and not pretrained:
            raise ValueError(f"open_clip model {model!r}: set `pretrained` (a tag, e.g. 'openai') or `checkpoint` "
                             "(a local weights file)")

    def key(self) -> tuple:
        return (self.kind, self.model, str(self.pretrained), str(self.checkpoint or ""), str(self.model_config or ""))

    def describe(self) -> str:
        return f"open_clip {self.model!r} ({'checkpoint ' + str(self.checkpoint) if self.checkpoint else 'pretrained=' + repr(self.pretrained)})"

    def _config_file(self):
        """The configured model config JSON (None when none is configured); it must exist."""
        path = explicit_path(self.model_config)
        if path is not None and not path.is_file():
            raise WeightsNotFoundError(f"open_clip model config JSON for {self.model!r} not found: {path}")
        return path

    def _register_config(self) -> None:
        path = self._config_file()
        if path is not None:
            import open_clip

            open_clip.add_model_config(path)

    def _pretrained_cfg(self) -> dict[str, Any]:
        import open_clip

        self._register_config()
        cfg = open_clip.get_pretrained_cfg(self.model, self.pretrained)
        if not cfg:
            tags = open_clip.list_pretrained_tags_by_model(self.model)
            raise ValueError(f"open_clip has no pretrained tag {self.pretrained!r} for model {self.model!r}; "
                             f"known tags: {tags}")
        return cfg

    def _cache_candidates(self) -> list[tuple[str, str, list[str]]]:
        """[("hf", repo_id, filenames) | ("url", folder, [filename])] where open_clip keeps this tag."""
        cfg = open_clip_sources(self.model, self.pretrained, self._pretrained_cfg)
        out = []
        if cfg.get("hf_hub"):
            repo_id, filename = os.path.split(cfg["hf_hub"])
            filename = filename or OPEN_CLIP_WEIGHTS_NAME
            names = ([OPEN_CLIP_SAFE_WEIGHTS_NAME] if filename == OPEN_CLIP_WEIGHTS_NAME else
                     [filename[:-4] + ".safetensors"] if filename.endswith((".bin", ".pth")) else []) + [filename]
            out.append(("hf", repo_id, names))
        if cfg.get("url"):
            folder = self.cache_dir or os.path.expanduser("~/.cache/clip")
            out.append(("url", folder, [os.path.basename(cfg["url"])]))
        return out

    def searched(self) -> list[str]:
        if self.checkpoint:
            return [f"configured checkpoint {self.checkpoint}"]
        try:
            candidates = self._cache_candidates()
        except Exception as err:  # an unknown tag: say so instead of listing paths
            return [f"(cannot list cache paths: {err})"]
        return [f"Hugging Face cache {self.cache_dir or hf_cache_dir()} ({where}/{' or '.join(names)})" if kind == "hf"
                else f"open_clip URL cache {where}/{names[0]}" for kind, where, names in candidates]

    def find(self) -> Resolved | None:
        self._config_file()
        if self.checkpoint:
            path = explicit_path(self.checkpoint)
            if not path.is_file():
                raise self.missing("the configured checkpoint does not exist")
            return Resolved(str(path), "config", f"open_clip:{self.model}:sha256={file_fingerprint(path)}")
        for kind, where, names in self._cache_candidates():
            if kind == "hf":
                found = hf_cached_file(where, names, cache_dir=self.cache_dir)
            else:
                found = str(Path(where) / names[0]) if (Path(where) / names[0]).is_file() else None
            if found:
                return Resolved(found, "cache", f"open_clip:{self.model}:{self.pretrained}")
        return None

    def download(self) -> Resolved:
        import open_clip

        path = open_clip.download_pretrained(self._pretrained_cfg(), cache_dir=self.cache_dir)
        if not path:
            raise RuntimeError(f"open_clip returned no file for {self.model}/{self.pretrained}")
        return Resolved(path, "download", f"open_clip:{self.model}:{self.pretrained}")

    def load(self, resolved: Resolved, device):
        """(model, image preprocess, tokenizer). With a tag, the tag's own settings are applied to the
        local file: QuickGELU (open_clip 3 only warns on a mismatch; OpenAI weights need it) and the
        tag's normalisation / interpolation, exactly as ``pretrained=<tag>`` would."""
        import open_clip

        self._register_config()
        kwargs: dict[str, Any] = {}
        if not self.checkpoint:
            cfg = self._pretrained_cfg()
            kwargs["force_quick_gelu"] = bool(cfg.get("quick_gelu", False))
            for src, dst in (("mean", "image_mean"), ("std", "image_std"), ("interpolation", "image_interpolation"),
                             ("resize_mode", "image_resize_mode")):
                if cfg.get(src) is not None:
                    kwargs[dst] = cfg[src]
        model, _, preprocess = open_clip.create_model_and_transforms(self.model, pretrained=resolved.path,
                                                                     device=device, **kwargs)
        tokenizer = open_clip.get_tokenizer(self.model)
        return model.eval().requires_grad_(False), preprocess, tokenizer

    def watched_modules(self, loaded) -> list[torch.nn.Module]:
        import torch

        model = loaded[0]
        return [m for m in (getattr(model, "visual", None), getattr(model, "transformer", None),
                            getattr(model, "text", None)) if isinstance(m, torch.nn.Module)]


# ----------------------------------------------------------------------------------------------
# transformers CLIP (torchmetrics CLIPScore semantics)

HF_CLIP_PATTERNS = ["*.json", "*.txt", "*.safetensors"]


class HfClipBackbone(Backbone):
    kind = "hf_clip"
    metric_set = "pie_bench"

    def __init__(self, model: str = "openai/clip-vit-large-patch14", revision: str | None = None,
                 cache_dir: str | None = None):
        self.model, self.revision, self.cache_dir = model, revision, cache_dir

    def key(self) -> tuple:
        return (self.kind, self.model, str(self.revision))

    def describe(self) -> str:
        return f"transformers CLIPModel {self.model!r} (revision {self.revision or 'main'})"

    def _local_dir(self) -> Path | None:
        path = explicit_path(self.model)
        return path if path is not None and path.is_dir() else None

    def searched(self) -> list[str]:
        if self._local_dir() or self.model.startswith(("/", ".", "~")):
            return [f"local folder {self.model}"]
        return [f"local folder {self.model} (not a folder)",
                f"Hugging Face cache {self.cache_dir or hf_cache_dir()} (repo {self.model}, files {HF_CLIP_PATTERNS})"]

    def find(self) -> Resolved | None:

        local = self._local_dir()
        if local is not None:
            return Resolved(str(local), "config", f"hf_clip:{local.name}:sha256={fingerprint_dir(local)[:12]}")
        if self.model.startswith(("/", ".", "~")):
            raise self.missing("the configured folder does not exist")
        from huggingface_hub import snapshot_download

        try:
            snapshot = snapshot_download(self.model, revision=self.revision, cache_dir=self.cache_dir,
                                         allow_patterns=HF_CLIP_PATTERNS, local_files_only=True)
        except Exception:  # not cached (several exception types depending on hub version)
            return None
        if not any(Path(snapshot).glob("*.safetensors")):
            return None
        return Resolved(snapshot, "cache", f"hf_clip:{self.model}@{self.revision or 'main'}")

    def download(self) -> Resolved:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(self.model, revision=self.revision, cache_dir=self.cache_dir,
                                     allow_patterns=HF_CLIP_PATTERNS)
        return Resolved(snapshot, "download", f"hf_clip:{self.model}@{self.revision or 'main'}")

    def load(self, resolved: Resolved, device):
        from transformers import CLIPModel, CLIPProcessor

        model = CLIPModel.from_pretrained(resolved.path, local_files_only=True, use_safetensors=True)
        processor = CLIPProcessor.from_pretrained(resolved.path, local_files_only=True)
        return model.to(device).eval().requires_grad_(False), processor

    def watched_modules(self, loaded) -> list[torch.nn.Module]:
        model = loaded[0]
        return [model.vision_model, model.text_model]
