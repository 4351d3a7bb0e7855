"""The metric stage: records, keys, no recomputation on re-run (forward-pass counters), NaN records,
up-front backbone checks offline, and the NS-LPIPS (StyleDiffusion) mask on the tiny pipeline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import compose_config
from metrics_helpers import save_features_state
from PIL import Image

from bench.config import group_options
from bench.images import to_pil


def _write_png(path: Path, image: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    to_pil(image).save(path)


def make_results(root: Path, source: torch.Tensor, n: int = 2, mask_path: Path | None = None) -> Path:
    """A results dir as the runner writes it: sources/*.png, edits/<method>/<key>.{png,json}."""
    _write_png(root / "sources" / "src_64.png", source)
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        edited = (source + 0.2 * torch.randn(source.shape, generator=g)).clamp(-1, 1)
        key = f"edit{i}"
        _write_png(root / "edits" / "m" / f"{key}.png", edited)
        item = {"item_id": f"it{i}", "image_id": "img", "image_path": "x.png", "source_prompt": "a dog on grass",
                "target_prompt": "a dog on grass" if i == 0 else "a cat on grass", "blend_words": ["dog", "cat"],
                "mask_path": str(mask_path) if mask_path else None, "image_sha256": "0" * 64}
        record = {"key": key, "status": "ok", "item": item, "method": {"label": "m"},
                  "files": {"edited": f"edits/m/{key}.png", "source": "sources/src_64.png"}}
        (root / "edits" / "m" / f"{key}.json").write_text(json.dumps(record))
    failed = {"key": "bad", "status": "failed", "item": {"item_id": "bad"}, "method": {"label": "m"}}
    (root / "edits" / "m" / "bad.json").write_text(json.dumps(failed))
    return root


@pytest.fixture(scope="module")
def alex(tmp_path_factory) -> Path:
    return save_features_state(tmp_path_factory.mktemp("w") / "alex.safetensors", "alexnet")


def test_stage_writes_records_and_rerun_does_no_forward_pass(tmp_path, alex, source_image):
    from bench.metric_stage import score_results
    from bench.metrics import backbones

    mask = np.zeros((64, 64), np.uint8)
    mask[16:40, 16:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    results = make_results(tmp_path / "results", source_image[0], mask_path=tmp_path / "mask.png")
    cfg = {"ids": ["lpips_alex", "recon_lpips", "bg_psnr_pie", "recon_psnr"],
           "registry": {"lpips_alex": {"_target_": "bench.metrics.lpips_metrics.LpipsDistance", "net": "alex",
                                       "backbone_path": str(alex)},
                        "recon_lpips": {"_target_": "bench.metrics.lpips_metrics.ReconLpips",
                                        "backbone_path": str(alex)},
                        "bg_psnr_pie": {"_target_": "bench.metrics.pie_background.BgPsnrPie"},
                        "recon_psnr": {"_target_": "bench.metrics.pie_background.ReconPsnr"}}}
    first = score_results(results, cfg)
    assert first["records"] == 2 and first["scored"] == 8 and first["skipped"] == 0 and not first["failures"]
    assert first["nan"] == 2  # recon_psnr and recon_lpips on the non-reconstruction item
    identity = next(iter(first["backbone_forward_calls"]))
    assert identity.startswith("lpips:alex:sha256=")
    assert first["backbones_loaded"] == {identity: 1}  # shared by lpips_alex and recon_lpips, loaded once
    assert first["backbone_forward_calls"][identity] == 2  # one batch forward per metric

    recs = {(r["metric_id"], r["edit_key"]): r for r in
            (json.loads(p.read_text()) for p in (results / "metrics").rglob("*.json"))}
    assert len(recs) == 8
    rec = recs[("lpips_alex", "edit1")]
    assert set(rec) >= {"key", "edit_key", "metric_id", "version", "value", "higher_is_better", "display_scale",
                        "backbone"}
    assert rec["backbone"] == identity and rec["higher_is_better"] is False and rec["value"] > 0
    assert (results / "metrics" / "lpips_alex" / f"{rec['key']}.json").is_file()
    assert recs[("recon_psnr", "edit1")]["value"] is None and recs[("recon_psnr", "edit1")]["is_nan"]
    assert recs[("recon_psnr", "edit0")]["value"] > 0

    before = dict(backbones.FORWARD_CALLS)
    second = score_results(results, cfg)
    assert second["scored"] == 0 and second["skipped"] == 8
    assert second["backbone_forward_calls"] == {} and second["backbones_loaded"] == {}
    assert dict(backbones.FORWARD_CALLS) == before

    # a changed edited image is a new key: only that record is rescored
    _write_png(results / "edits" / "m" / "edit1.png", -source_image[0])
    third = score_results(results, cfg)
    assert third["scored"] == 4 and third["skipped"] == 4


def test_check_backbones_fails_fast_offline_without_weights(tmp_path, monkeypatch):
    import huggingface_hub.constants

    from bench.metric_stage import check_backbones
    from bench.metrics.backbones import WeightsNotFoundError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    cfg = {"ids": ["lpips_alex", "clip_score", "structure_dist", "clip_score_pie"],
           "registry": {"lpips_alex": {"_target_": "bench.metrics.lpips_metrics.LpipsDistance", "net": "alex"},
                        "structure_dist": {"_target_": "bench.metrics.structure.StructureDist"},
                        "clip_score": {"_target_": "bench.metrics.clip_metrics.ClipScore",
                                       "cache_dir": str(tmp_path / "clip")},
                        "clip_score_pie": {"_target_": "bench.metrics.clip_metrics.ClipScorePie",
                                           "cache_dir": str(tmp_path / "hf")}}}
    with pytest.raises(WeightsNotFoundError) as info:
        check_backbones(cfg)
    message = str(info.value)
    assert "4 metric backbone(s) unavailable" in message
    for expected in ("LPIPS-alex", str(tmp_path / "torch" / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"),
                     "open_clip 'ViT-L-14'", "timm/vit_large_patch14_clip_224.openai",
                     "timm 'vit_base_patch8_224.dino'", "openai/clip-vit-large-patch14",
                     "bench weights fetch", "offline"):
        assert expected in message, expected


def test_check_backbones_resolves_local_weights(alex):
    from bench.metric_stage import check_backbones
    from bench.metrics.backbones import WeightsNotFoundError

    cfg = [{"_target_": "bench.metrics.lpips_metrics.LpipsDistance", "net": "alex", "backbone_path": str(alex)},
           {"_target_": "bench.metrics.pie_background.BgPsnrPie"}]
    resolved = check_backbones(cfg)
    assert resolved["lpips_alex"][0].startswith("lpips:alex:sha256=") and resolved["bg_psnr_pie"] == []
    missing = [{"_target_": "bench.metrics.lpips_metrics.LpipsDistance", "backbone_path": str(alex) + ".nope"}]
    with pytest.raises(WeightsNotFoundError, match="configured backbone_path"):
        check_backbones(missing)


@pytest.mark.parametrize("name", group_options("metrics"))
def test_metric_config_builds(name, tmp_path):
    """Every file of conf/metrics/ (discovered) composes and builds: ids ↔ registry, distinct ids, metadata set."""
    from omegaconf import OmegaConf

    from bench.metrics.registry import build_metrics

    cfg = OmegaConf.to_container(compose_config([f"metrics={name}"], tmp_path).metrics, resolve=True)
    metrics = build_metrics(cfg)
    assert [m.id for m in metrics] == list(cfg.get("ids") or [])
    for metric in metrics:
        assert isinstance(metric.higher_is_better, bool) and metric.display_scale > 0 and metric.version
    if name == "pie_bench":  # the published table's column scales
        pie = {m.id: m for m in metrics}
        assert pie["structure_dist_pie"].display_scale == 1000 and pie["bg_mse_pie"].display_scale == 1e4


# ----------------------------------------------------------------------------------------------
# NS-LPIPS (StyleDiffusion) mask


def test_background_png_follows_storemask(monkeypatch, tiny_pipe, source_image):
    """bg = 255 − bicubic-resized uint8(255·map/max) of the token at words.index(word) + 1."""
    from bench.metrics import ns_mask

    maps = torch.rand(8, 8, 77, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(ns_mask, "attention_map", lambda *a, **k: maps)
    png = ns_mask.background_png(tiny_pipe, source_image[0], "a photo of dog", "dog", resolution=32)
    token = maps[:, :, 4]  # "dog" is word 3 → token 4 (BOS first)
    fg = (255 * token / token.max()).numpy().astype(np.uint8)
    fg = np.array(Image.fromarray(np.stack([fg] * 3, -1)).resize((32, 32), Image.BICUBIC))
    assert np.array_equal(np.asarray(png), 255 - fg)
    mask = ns_mask.mask_from_png(png, 32)
    assert mask.shape == (1, 32, 32)
    assert torch.allclose(mask[0], torch.from_numpy((255 - fg[..., 0]) / 255.0).float() * 0.9999, atol=1e-6)
    with pytest.raises(ns_mask.BlendWordError):
        ns_mask.background_png(tiny_pipe, source_image[0], "a photo of dog", "cat", resolution=32)


def test_attention_map_is_second_half_heads_of_a_50_step_ddim_inversion(tiny_pipe, source_image):
    from bench.metrics.ns_mask import STYLEDIFFUSION_DDIM, attention_map

    before = tiny_pipe.counter.nfe
    maps = attention_map(tiny_pipe, source_image[0], "a dog on grass")
    assert tiny_pipe.counter.nfe - before == 50  # 50 conditional-only UNet calls, batch 1
    assert tiny_pipe.counter.forward_calls[1] >= 50
    # the tiny UNet's latent is 16², so latent/4 = 4 → rounded up to its smallest attention map (8²)
    assert maps.shape == (8, 8, 77)
    assert torch.allclose(maps.sum(-1), torch.ones(8, 8), atol=1e-5)  # mean of softmax rows
    assert STYLEDIFFUSION_DDIM["steps_offset"] == 0


def test_ns_lpips_sd_through_the_stage_reuses_masks(tmp_path, alex, tiny_pipe, source_image):
    from bench.metric_stage import score_results

    results = make_results(tmp_path / "results", source_image[0], n=2)
    cfg = [{"_target_": "bench.metrics.lpips_metrics.NsLpipsSd", "backbone_path": str(alex), "resolution": 64}]
    nfe = tiny_pipe.counter.nfe
    summary = score_results(results, cfg, pipe=tiny_pipe)
    assert summary["scored"] == 2 and not summary["failures"]
    assert tiny_pipe.counter.nfe - nfe == 50  # one inversion for the source both edits share
    masks = list((results / "masks" / "ns_lpips_sd").glob("*.png"))
    assert len(masks) == 1 and Image.open(masks[0]).size == (64, 64)
    values = [json.loads(p.read_text())["value"] for p in (results / "metrics" / "ns_lpips_sd").glob("*.json")]
    assert all(v is not None and v > 0 and math.isfinite(v) for v in values)

    nfe = tiny_pipe.counter.nfe
    again = score_results(results, cfg, pipe_loader=lambda: tiny_pipe)
    assert again["scored"] == 0 and again["backbone_forward_calls"] == {} and tiny_pipe.counter.nfe == nfe
