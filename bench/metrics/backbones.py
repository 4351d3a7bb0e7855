"""Evaluator backbones: weight resolution, loading through each network's own library, counting.

Resolution order for every backbone (design.md §3, conventions.md §2.4):

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

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from bench.models import ModelNotFoundError

FETCH_HINT = "bench weights fetch --metrics {metric_set}"
FORWARD_CALLS: Counter = Counter()  # process-wide forward passes per backbone identity (tests read it)


class WeightsNotFoundError(ModelNotFoundError):
    """Evaluator weights could not be resolved; the message names the model, the paths searched and the fix."""


def downloads_allowed() -> bool:
    """False when the environment says we are offline (the test suite, offline cluster nodes)."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "EDITBENCH_OFFLINE"):
        if os.environ.get(var, "0").strip().lower() in {"1", "true", "yes", "on"}:
            return False
    return True


def file_fingerprint(path: str | Path, chunk: int = 4 << 20) -> str:
    """sha256 over the size and the first and last 4 MiB of a file (whole file when small): 12 hex."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\0".encode())
    with open(path, "rb") as handle:
        if size <= 2 * chunk:
            digest.update(handle.read())
        else:
            digest.update(handle.read(chunk))
            handle.seek(size - chunk)
            digest.update(handle.read(chunk))
    return digest.hexdigest()[:12]


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors (safetensors) or .pth/.pt/.bin (``torch.load(weights_only=True)``)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path), device="cpu")
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # common checkpoint wrappers
        if isinstance(state, dict) and wrapper in state and isinstance(state[wrapper], dict):
            state = state[wrapper]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name → tensor), got {type(state).__name__}")
    return state


def hf_cache_dir(cache_dir: str | None = None) -> str:
    from huggingface_hub import constants

    return str(cache_dir or constants.HF_HUB_CACHE)


def hf_cached_file(repo_id: str, filenames: Iterable[str], cache_dir: str | None = None,
                   revision: str | None = None) -> str | None:
    """The first of ``filenames`` present in the HF cache for ``repo_id`` (no network)."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        found = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir, revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return found
    return None


@dataclass
class Resolved:
    """Where a backbone's weights are: ``path`` (a file or folder), how they were found, and the
    path-independent identity recorded in metric records and keys."""

    path: str
    source: str  # "config" | "cache" | "download"
    identity: str


class Backbone:
    """One evaluator network: how to find its weights and how to load it."""

    kind = "backbone"
    metric_set = "default"  # the conf/metrics set whose `bench weights fetch --metrics` fetches it

    def key(self) -> tuple:
        """Equal keys = the same loaded object (shared between metrics in one scoring call)."""
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def searched(self) -> list[str]:
        """Human-readable list of the places looked at (for errors and `bench weights fetch`)."""
        raise NotImplementedError

    def find(self) -> Resolved | None:
        """Local path or library cache; never the network."""
        raise NotImplementedError

    def download(self) -> Resolved:
        raise NotImplementedError

    def load(self, resolved: Resolved, device: torch.device | str) -> Any:
        raise NotImplementedError

    def watched_modules(self, loaded: Any) -> list[torch.nn.Module]:
        """The modules whose forward passes are counted (one count per batch forward)."""
        return [loaded] if isinstance(loaded, torch.nn.Module) else []

    # ------------------------------------------------------------------------------------------
    def resolve(self, allow_download: bool | None = None) -> Resolved:
        found = self.find()
        if found is not None:
            return found
        if allow_download is None:
            allow_download = downloads_allowed()
        if allow_download:
            try:
                return self.download()
            except Exception as err:  # network errors come in many types; report them uniformly
                raise self.missing(f"download failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from err
        raise self.missing("offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / EDITBENCH_OFFLINE set), so no download was tried")

    def missing(self, why: str) -> WeightsNotFoundError:
        lines = "\n".join(f"    - {s}" for s in self.searched())
        return WeightsNotFoundError(
            f"Weights for evaluator backbone {self.describe()} were not found: {why}.\n"
            f"  searched:\n{lines}\n"
            f"  fix: run `{FETCH_HINT.format(metric_set=self.metric_set)}` on a machine with internet and copy the caches (TORCH_HOME, HF_HOME) "
            f"here, or set an explicit local path in the metric config (conf/metrics/*.yaml)."
        )


def _explicit_file(path: str | None, what: str) -> Path | None:
    if not path:
        return None
    return Path(os.path.expanduser(str(path)))


# ----------------------------------------------------------------------------------------------
# LPIPS (lpips package, or torchmetrics' copy)

_TV_WEIGHTS = {"alex": ("AlexNet_Weights", "IMAGENET1K_V1"), "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
               "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1")}


def _torchvision_url(net: str) -> str:
    import torchvision

    enum_name, member = _TV_WEIGHTS[net]
    return getattr(getattr(torchvision.models, enum_name), member).url


def load_backbone_into_slices(net: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load a torchvision classifier state dict (``features.<i>.<param>``) into LPIPS' feature slices.

    Both lpips (``slice<k>.<i>``) and torchmetrics (``slices.<k>.<i>``) keep torchvision's layer index
    ``i`` as the child name inside each slice, so ``features.<i>.rest`` → ``<slice path>.<i>.rest``.
    Classifier weights are ignored; every slice parameter must be present (strict).
    """
    import re

    index_to_path: dict[int, str] = {}
    for name, _ in net.named_modules():
        parent, _, last = name.rpartition(".")
        if last.isdigit() and re.fullmatch(r"slice\d+|slices\.\d+", parent or ""):
            index_to_path[int(last)] = name
    mapped: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        match = re.fullmatch(r"features\.(\d+)\.(.+)", key)
        if match and int(match.group(1)) in index_to_path:
            mapped[f"{index_to_path[int(match.group(1))]}.{match.group(2)}"] = value
    expected = set(net.state_dict())
    missing, unexpected = sorted(expected - set(mapped)), sorted(set(mapped) - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: not a torchvision state dict for this LPIPS backbone "
                         f"(missing {missing[:4]}{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]})")
    net.load_state_dict(mapped, strict=True)


class LpipsBackbone(Backbone):
    kind = "lpips"

    def __init__(self, net: str = "alex", path: str | None = None, flavor: str = "lpips"):
        if net not in _TV_WEIGHTS:
            raise ValueError(f"LPIPS net={net!r}: expected one of {sorted(_TV_WEIGHTS)}")
        if flavor not in ("lpips", "torchmetrics"):
            raise ValueError(f"LPIPS flavor={flavor!r}: expected 'lpips' or 'torchmetrics'")
        self.net, self.path, self.flavor = net, path, flavor
        self.metric_set = "pie_bench" if flavor == "torchmetrics" else "default"

    def key(self) -> tuple:
        return (self.kind, self.flavor, self.net, str(self.path or ""))

    def describe(self) -> str:
        return f"LPIPS-{self.net} ({self.flavor}; torchvision {_TV_WEIGHTS[self.net][0]}.IMAGENET1K_V1 backbone)"

    def _cache_file(self) -> Path:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_torchvision_url(self.net))

    def searched(self) -> list[str]:
        if self.path:
            return [f"configured backbone_path {self.path}"]
        return [f"torchvision cache {self._cache_file()} (TORCH_HOME)"]

    def find(self) -> Resolved | None:
        explicit = _explicit_file(self.path, "backbone_path")
        if explicit is not None:
            if not explicit.is_file():
                raise self.missing("the configured backbone_path does not exist")
            return Resolved(str(explicit), "config", f"{self.flavor}:{self.net}:sha256={file_fingerprint(explicit)}")
        cached = self._cache_file()
        if cached.is_file():
            return Resolved(str(cached), "cache", f"{self.flavor}:{self.net}:torchvision-IMAGENET1K_V1")
        return None

    def download(self) -> Resolved:
        torch.hub.load_state_dict_from_url(_torchvision_url(self.net), map_location="cpu", check_hash=True,
                                           weights_only=True)
        return Resolved(str(self._cache_file()), "download", f"{self.flavor}:{self.net}:torchvision-IMAGENET1K_V1")

    def load(self, resolved: Resolved, device) -> torch.nn.Module:
        if self.flavor == "lpips":
            import lpips

            # pnet_rand=True: no torchvision download; the linear heads (pretrained=True) ship in the package
            model = lpips.LPIPS(pretrained=True, net=self.net, pnet_rand=True, verbose=False)
        else:
            from torchmetrics.functional.image.lpips import _NoTrainLpips

            model = _NoTrainLpips(pretrained=True, net=self.net, pnet_rand=True)
        load_backbone_into_slices(model.net, load_state_dict_file(resolved.path), resolved.path)
        return model.to(device).eval().requires_grad_(False)


# ----------------------------------------------------------------------------------------------
# open_clip

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

    def _register_config(self) -> None:
        if self.model_config:
            import open_clip

            path = Path(os.path.expanduser(str(self.model_config)))
            if not path.is_file():
                raise WeightsNotFoundError(f"open_clip model config JSON for {self.model!r} not found: {path}")
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
        from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

        cfg = self._pretrained_cfg()
        out = []
        if cfg.get("hf_hub"):
            repo_id, filename = os.path.split(cfg["hf_hub"])
            filename = filename or HF_WEIGHTS_NAME
            names = ([HF_SAFE_WEIGHTS_NAME] if filename == HF_WEIGHTS_NAME else
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
        return [f"Hugging Face cache {hf_cache_dir(self.cache_dir)} ({where}/{' or '.join(names)})" if kind == "hf"
                else f"open_clip URL cache {where}/{names[0]}" for kind, where, names in candidates]

    def find(self) -> Resolved | None:
        self._register_config()
        if self.checkpoint:
            path = Path(os.path.expanduser(str(self.checkpoint)))
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
        path = Path(os.path.expanduser(self.model))
        return path if path.is_dir() else None

    def searched(self) -> list[str]:
        if self._local_dir() or self.model.startswith(("/", ".", "~")):
            return [f"local folder {self.model}"]
        return [f"local folder {self.model} (not a folder)",
                f"Hugging Face cache {hf_cache_dir(self.cache_dir)} (repo {self.model}, files {HF_CLIP_PATTERNS})"]

    def find(self) -> Resolved | None:
        from bench.models import fingerprint_dir

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


# ----------------------------------------------------------------------------------------------
# timm ViT (DINO)

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
            path = Path(os.path.expanduser(str(self.model_kwargs_json)))
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
        import timm

        cfg = timm.models.get_pretrained_cfg(self.model)
        return getattr(cfg, "hf_hub_id", None) if cfg is not None else None

    _HUB_FILES = ("model.safetensors", "pytorch_model.bin")

    def searched(self) -> list[str]:
        if self.checkpoint:
            return [f"configured checkpoint {self.checkpoint}"]
        hub = self._hub_id()
        return [f"Hugging Face cache {hf_cache_dir()} (repo {hub}, {' or '.join(self._HUB_FILES)})" if hub
                else f"(timm has no hub weights for {self.model!r}: set `checkpoint`)"]

    def find(self) -> Resolved | None:
        if self.checkpoint:
            path = Path(os.path.expanduser(str(self.checkpoint)))
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


# ----------------------------------------------------------------------------------------------
# the per-call store

class BackboneStore:
    """Loads each backbone once (per store) and counts forward passes of what it loaded."""

    def __init__(self, device: torch.device | str = "cpu", allow_download: bool | None = None):
        self.device = torch.device(device)
        self.allow_download = allow_download
        self._loaded: dict[tuple, tuple[Resolved, Any, list]] = {}
        self.forward_calls: Counter = Counter()
        self.loads: Counter = Counter()

    def resolve(self, backbone: Backbone) -> Resolved:
        entry = self._loaded.get(backbone.key())
        return entry[0] if entry else backbone.resolve(self.allow_download)

    def get(self, backbone: Backbone) -> Any:
        key = backbone.key()
        if key not in self._loaded:
            resolved = backbone.resolve(self.allow_download)
            loaded = backbone.load(resolved, self.device)
            label = resolved.identity
            handles = []
            for module in backbone.watched_modules(loaded):
                def count(_module, _args, label=label):
                    self.forward_calls[label] += 1
                    FORWARD_CALLS[label] += 1
                handles.append(module.register_forward_pre_hook(count))
            self._loaded[key] = (resolved, loaded, handles)
            self.loads[label] += 1
        return self._loaded[key][1]

    def release(self, backbone: Backbone) -> None:
        entry = self._loaded.pop(backbone.key(), None)
        if entry:
            for handle in entry[2]:
                handle.remove()

    def loaded_identities(self) -> list[str]:
        return [entry[0].identity for entry in self._loaded.values()]
