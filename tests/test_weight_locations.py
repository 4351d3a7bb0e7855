"""bench/weight_locations.py states where the libraries keep weights without importing them; each
recorded fact must be what the installed library says."""

from __future__ import annotations

import pytest

from bench import weight_locations


def test_torchvision_urls_are_the_libraries():
    import torchvision

    for (enum_name, member), url in weight_locations.TORCHVISION_URLS.items():
        assert getattr(getattr(torchvision.models, enum_name), member).url == url


def test_open_clip_sources_and_file_names_are_the_libraries():
    import open_clip
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    from bench.metrics.backbones.clip import OPEN_CLIP_SAFE_WEIGHTS_NAME, OPEN_CLIP_WEIGHTS_NAME

    assert (OPEN_CLIP_WEIGHTS_NAME, OPEN_CLIP_SAFE_WEIGHTS_NAME) == (HF_WEIGHTS_NAME, HF_SAFE_WEIGHTS_NAME)
    for (model, tag), sources in weight_locations.OPEN_CLIP_SOURCES.items():
        cfg = open_clip.get_pretrained_cfg(model, tag)
        assert sources == {key: cfg[key] for key in ("hf_hub", "url") if cfg.get(key)}, (model, tag)


def test_timm_hub_ids_are_the_libraries():
    import timm

    for model, hub_id in weight_locations.TIMM_HUB_IDS.items():
        assert timm.models.get_pretrained_cfg(model).hf_hub_id == hub_id


@pytest.mark.parametrize("env", [{}, {"XDG_CACHE_HOME": "/x/cache"}, {"TORCH_HOME": "~/th", "XDG_CACHE_HOME": "/x"}])
def test_default_torch_hub_dir_is_torchs(env, monkeypatch):
    import torch

    for var in ("TORCH_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # no set_dir: torch computes it from the environment
    assert weight_locations.default_torch_hub_dir() == torch.hub.get_dir()


def test_unrecorded_backbones_ask_their_library():
    import timm

    name = "vit_small_patch16_224.dino"
    assert name not in weight_locations.TIMM_HUB_IDS
    assert weight_locations.timm_hub_id(name) == timm.models.get_pretrained_cfg(name).hf_hub_id
    asked = []
    sources = weight_locations.open_clip_sources("ViT-B-16", "openai", lambda: asked.append(1) or {"url": "u"})
    assert sources == {"url": "u"} and asked == [1]
