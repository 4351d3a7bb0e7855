"""Where weights live on disk, answered without importing torch or the network libraries.

A job's preflight (bench/preflight.py) must name every missing piece in about a second; importing
torch, torchvision, open_clip and timm to ask them where they keep a file takes several. So the cache
folders are computed as the libraries compute them, and the download locations of the shipped metric
backbones (conf/metrics/*.yaml) are recorded here as the libraries state them; any other backbone is
looked up in its library (correct, only slower). tests/test_weight_locations.py checks every entry
against the installed libraries.
"""

from __future__ import annotations

import os
import sys

# torchvision weights enum → its download URL (torchvision.models.<Enum>.IMAGENET1K_V1.url)
TORCHVISION_URLS = {
    ("AlexNet_Weights", "IMAGENET1K_V1"): "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
    ("VGG16_Weights", "IMAGENET1K_V1"): "https://download.pytorch.org/models/vgg16-397923af.pth",
    ("SqueezeNet1_1_Weights", "IMAGENET1K_V1"): "https://download.pytorch.org/models/squeezenet1_1-b8a52dc0.pth",
}
_OPENAI_CLIP = "https://openaipublic.azureedge.net/clip/models"
# open_clip (model, pretrained tag) → the ``hf_hub`` and ``url`` of open_clip.get_pretrained_cfg
OPEN_CLIP_SOURCES = {
    ("ViT-L-14", "openai"): {
        "hf_hub": "timm/vit_large_patch14_clip_224.openai/",
        "url": f"{_OPENAI_CLIP}/b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836/ViT-L-14.pt"},
    ("ViT-B-32", "openai"): {
        "hf_hub": "timm/vit_base_patch32_clip_224.openai/",
        "url": f"{_OPENAI_CLIP}/40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af/ViT-B-32.pt"},
}
# timm model name → timm.models.get_pretrained_cfg(name).hf_hub_id
TIMM_HUB_IDS = {"vit_base_patch8_224.dino": "timm/vit_base_patch8_224.dino"}


def hf_cache_dir() -> str:
    """The Hugging Face hub cache (HF_HUB_CACHE, else HF_HOME/hub); huggingface_hub imports no torch."""
    from huggingface_hub import constants

    return str(constants.HF_HUB_CACHE)


def torch_hub_dir() -> str:
    """``torch.hub.get_dir()``; once torch is imported its own answer (``torch.hub.set_dir`` may have moved it)."""
    if "torch" in sys.modules:
        return sys.modules["torch"].hub.get_dir()
    return default_torch_hub_dir()


def default_torch_hub_dir() -> str:
    """torch's default hub dir: $TORCH_HOME/hub, else $XDG_CACHE_HOME/torch/hub, else ~/.cache/torch/hub."""
    home = os.getenv("TORCH_HOME", os.path.join(os.getenv("XDG_CACHE_HOME", "~/.cache"), "torch"))
    return os.path.join(os.path.expanduser(home), "hub")


def torchvision_url(enum_name: str, member: str) -> str:
    if (enum_name, member) in TORCHVISION_URLS:
        return TORCHVISION_URLS[enum_name, member]
    import torchvision

    return getattr(getattr(torchvision.models, enum_name), member).url


def open_clip_sources(model: str, pretrained: str, pretrained_cfg) -> dict[str, str]:
    """{"hf_hub": ..., "url": ...} of an open_clip tag; ``pretrained_cfg()`` asks open_clip itself."""
    if (model, pretrained) in OPEN_CLIP_SOURCES:
        return OPEN_CLIP_SOURCES[model, pretrained]
    cfg = pretrained_cfg()
    return {key: cfg[key] for key in ("hf_hub", "url") if cfg.get(key)}


def timm_hub_id(model: str) -> str | None:
    if model in TIMM_HUB_IDS:
        return TIMM_HUB_IDS[model]
    import timm

    cfg = timm.models.get_pretrained_cfg(model)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None
