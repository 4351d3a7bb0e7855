"""The committed toy weights: load through the same library paths as the real models; the ground-truth
metrics agree with independent computations and behave as the truth says."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from bench.data.item import EditItem
from bench.metrics.base import MetricInput
from bench.toyworld import evaluators as ev
from bench.toyworld.evaluators import WEIGHTS_DIR

SCHEDULER = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False,
             "set_alpha_to_one": False, "steps_offset": 1}


def _tensor(path):
    arr = np.asarray(Image.open(path).convert("RGB")).astype(np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1) / 127.5 - 1


def _mask(path):
    return torch.from_numpy(np.asarray(Image.open(path)).astype(np.float32) / 255.0)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    from bench.data.toy_shapes import ToyShapes

    return ToyShapes(str(tmp_path_factory.mktemp("suite"))).items()


def _inputs(items, edited_from="target"):
    out = []
    for item in items:
        source, target = _tensor(item.image_path), _tensor(item.target_image_path)
        edited = {"target": target, "source": source}[edited_from]
        out.append(MetricInput(source=source, edited=edited, item=item, mask=_mask(item.mask_path),
                               target_image=target))
    return out


def test_committed_pipeline_loads_with_load_pipeline_as_fp32():
    from omegaconf import OmegaConf

    from bench.models import load_pipeline

    cfg = OmegaConf.load("conf/model/toy.yaml")
    cfg.path = str(WEIGHTS_DIR / "toy-sd")  # conf interpolates ${paths.root_dir}
    pipe = load_pipeline(OmegaConf.to_container(cfg), SCHEDULER)
    assert all(p.dtype == torch.float32 for p in pipe.unet.parameters())
    assert pipe.resolution == 64 and pipe.latent_size == 16 and pipe.vae_scale_factor == 4
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    emb = pipe.encode_prompts(["a red circle on a navy background", "a red square on a navy background", ""])
    assert emb.shape == (3, 77, 128) and not torch.allclose(emb[0], emb[1])
    with torch.no_grad():
        eps = pipe.unet_eps(torch.randn(3, 4, 16, 16), 500, emb)
    assert eps.shape == (3, 4, 16, 16) and torch.isfinite(eps).all()
    encoder = pipe.get_image_encoder()
    with torch.no_grad():
        out = encoder(pixel_values=torch.zeros(1, 3, 64, 64))
    assert out.last_hidden_state.shape == (1, 65, encoder.config.hidden_size)
    # the committed training state says how long the UNet trained
    state = json.loads((WEIGHTS_DIR / "toy-sd" / "training_state.json").read_text())
    assert state["unet_steps"] > 0


def test_committed_evaluators_load_through_their_libraries():
    import open_clip
    import timm
    from safetensors.torch import load_file
    from torchvision.models import alexnet

    folder = WEIGHTS_DIR / "evaluators"
    open_clip.add_model_config(str(folder / "toy-clip.json"))
    model, _, preprocess = open_clip.create_model_and_transforms("toy-clip", pretrained=str(folder / "toy-clip.safetensors"))
    tokens = open_clip.get_tokenizer("toy-clip")(["a red circle on a navy background"])
    assert tokens.shape == (1, 16) and model.encode_text(tokens).shape == (1, 128)
    assert preprocess(Image.new("RGB", (64, 64))).shape == (3, 64, 64)
    kwargs = json.loads((folder / "toy-vit.json").read_text())
    vit = timm.create_model("vit_base_patch8_224", pretrained=True,
                            pretrained_cfg_overlay=dict(file=str(folder / "toy-vit.safetensors")), **kwargs)
    reference = ev.load_vit(folder)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():  # timm's pretrained path re-initialises the 21-way head (its cfg says 1000 classes);
        # the transformer (what Structure-dist reads) is loaded exactly
        assert torch.equal(vit.forward_features(x), reference.forward_features(x))
    net = alexnet()
    missing, unexpected = net.load_state_dict(load_file(folder / "toy-alexnet.safetensors"), strict=False)
    assert not unexpected and all(k.startswith("classifier.") for k in missing)
    sizes = sum(p.stat().st_size for p in WEIGHTS_DIR.rglob("*") if p.is_file())
    assert sizes <= 25 * 2 ** 20, f"committed weights are {sizes / 2 ** 20:.1f} MiB (budget 25)"


def test_gt_psnr_metrics_match_an_independent_computation(suite):
    from bench.toyworld.metrics import BgPsnrGt, GtTargetPsnr

    rng = np.random.default_rng(0)
    inputs = _inputs(suite[::6], "source")
    for inp in inputs:  # a noisy "edit": the source plus noise
        inp.edited = (inp.source + torch.from_numpy(rng.normal(0, 0.05, inp.source.shape).astype(np.float32))).clamp(-1, 1)
    got_full, got_bg = GtTargetPsnr().score(inputs), BgPsnrGt().score(inputs)
    for inp, full, bg in zip(inputs, got_full, got_bg):
        edited = (inp.edited.numpy().astype(np.float64) + 1) / 2
        target = (inp.target_image.numpy().astype(np.float64) + 1) / 2
        assert math.isclose(full, 10 * math.log10(1 / ((edited - target) ** 2).mean()), rel_tol=1e-4)
        keep = inp.mask.numpy() == 0
        assert math.isclose(bg, 10 * math.log10(1 / ((edited - target)[:, keep] ** 2).mean()), rel_tol=1e-4)
    # the true target scores the floor cap everywhere; the source is perfect outside the mask only
    exact = _inputs(suite[:3], "target")
    assert GtTargetPsnr().score(exact) == [100.0] * 3
    src = _inputs(suite[:3], "source")
    assert BgPsnrGt().score(src) == [100.0] * 3 and max(GtTargetPsnr().score(src)) < 40
    none = MetricInput(source=src[0].source, edited=src[0].edited, item=src[0].item)
    assert all(math.isnan(m.score([none])[0]) for m in (GtTargetPsnr(), BgPsnrGt()))


def test_gt_lpips_matches_a_hand_computed_lpips(suite):
    import lpips

    from bench.toyworld.metrics import GtTargetLpips

    inputs = _inputs(suite[:4], "source")
    metric = GtTargetLpips(backbone_path=str(WEIGHTS_DIR / "evaluators" / "toy-alexnet.safetensors"))
    got = metric.score(inputs)
    # independent: torchvision alexnet features, ReLU taps 1/4/7/9/11, unit-normalise channels,
    # lpips' shipped linear weights, spatial mean, sum over layers
    net = ev.load_alexnet(WEIGHTS_DIR / "evaluators")
    heads = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
    lin = [heads.lin0, heads.lin1, heads.lin2, heads.lin3, heads.lin4]

    def taps(x):
        feats, h = [], ev.lpips_pixels(x)
        for index, layer in enumerate(net.features):
            h = layer(h)
            if index in (1, 4, 7, 9, 11):
                feats.append(h)
        return feats

    with torch.no_grad():
        for inp, value in zip(inputs, got):
            fa, fb = taps(inp.edited[None]), taps(inp.target_image[None])
            total = 0.0
            for k, (a, b) in enumerate(zip(fa, fb)):
                a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                total += float(lin[k].model((a - b) ** 2).mean())
            assert math.isclose(value, total, rel_tol=1e-4, abs_tol=1e-6)
    assert all(v > 0 for v in got)
    assert metric.score(_inputs(suite[:2], "target")) == [0.0, 0.0]


def test_edit_accuracy_rewards_true_targets_and_rejects_unedited_sources(suite):
    from bench.toyworld.metrics import EditAccuracy

    metric = EditAccuracy(evaluators=str(WEIGHTS_DIR / "evaluators"))
    on_targets = metric.score(_inputs(suite, "target"))
    on_sources = metric.score(_inputs(suite, "source"))
    assert set(on_targets) <= {0.0, 1.0}
    assert np.mean(on_targets) >= 0.8, np.mean(on_targets)
    assert np.mean(on_sources) <= 0.1, np.mean(on_sources)
    item = EditItem(item_id="x", image_id="x", image_path="x.png", source_prompt="a photo", target_prompt="a cat")
    probe = MetricInput(source=torch.zeros(3, 64, 64), edited=torch.zeros(3, 64, 64), item=item)
    assert math.isnan(metric.score([probe])[0])


@pytest.mark.parametrize("method", ["ddim_p2p", "ef_ddpm"])
def test_toy_edits_reach_the_target_attribute_and_keep_the_rest(method, tmp_path):
    """The acceptance methods with their toy presets on the committed toy model, 6 suite items (2 per edit
    category, every 8th image): the toy evaluator reads the target caption's attributes on most edits, and
    the region the edit must not touch stays close to the source. A method that ignores the target prompt
    scores edit_accuracy ≈ 0 (see the unedited sources above); one that regenerates everything loses the
    background fidelity."""
    from conftest import compose_config

    from bench.runner import run_from_config
    from bench.tables import load_long

    cfg = compose_config(["model=toy", "dataset=toy_shapes", "metrics=toy_ground_truth", f"method={method}",
                          "dataset.num_shards=8", "runtime.num_threads=1", "tables=false",
                          f"paths.cache_dir={tmp_path / 'cache'}"], tmp_path / "results")
    summary = run_from_config(cfg)
    assert summary.ok == 6, summary.failures
    scores = load_long(tmp_path / "results").groupby("metric_id")["value"].mean()
    assert scores["edit_accuracy"] >= 4 / 6, scores  # measured: 6 / 6 for both
    assert scores["bg_psnr_gt"] >= 19.0, scores  # measured: 22.6 dB (ddim_p2p), 20.8 dB (ef_ddpm)
