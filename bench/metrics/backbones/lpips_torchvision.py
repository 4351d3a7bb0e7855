"""LPIPS backbones: the lpips package (or torchmetrics' copy) with torchvision classifier weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from bench.fingerprint import file_fingerprint
from bench.metrics.backbones.base import Backbone, Resolved, explicit_path, load_state_dict_file
from bench.weight_locations import torch_hub_dir, torchvision_url

if TYPE_CHECKING:
    import torch

_TV_WEIGHTS = {"alex": ("AlexNet_Weights", "IMAGENET1K_V1"), "vgg": ("VGG16_Weights", "IMAGENET1K_V1"),
               "squeeze": ("SqueezeNet1_1_Weights", "IMAGENET1K_V1")}


def _torchvision_url(net: str) -> str:
    return torchvision_url(*_TV_WEIGHTS[net])


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
        return Path(torch_hub_dir()) / "checkpoints" / os.path.basename(_torchvision_url(self.net))

    def searched(self) -> list[str]:
        if self.path:
            return [f"configured backbone_path {self.path}"]
        return [f"torchvision cache {self._cache_file()} (TORCH_HOME)"]

    def find(self) -> Resolved | None:
        explicit = explicit_path(self.path)
        if explicit is not None:
            if not explicit.is_file():
                raise self.missing("the configured backbone_path does not exist")
            return Resolved(str(explicit), "config", f"{self.flavor}:{self.net}:sha256={file_fingerprint(explicit)}")
        cached = self._cache_file()
        if cached.is_file():
            return Resolved(str(cached), "cache", f"{self.flavor}:{self.net}:torchvision-IMAGENET1K_V1")
        return None

    def download(self) -> Resolved:
        import torch

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
