"""Each metric against an independent computation written here from the protocol (docs/metrics.md#the-metrics,
reference code cited there), identity checks, NaN semantics. Backbones are tiny random-weight networks saved
to local files and loaded by the metrics through their real loaders (no network, no cache)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from metrics_helpers import (
    TINY_CLIP_NAME,
    TINY_VIT,
    save_features_state,
    write_tiny_hf_clip,
    write_tiny_open_clip,
    write_tiny_vit,
)
from PIL import Image

from bench.data.item import EditItem
from bench.metrics.base import MetricInput

TOL = 1e-6


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("evaluators")
    clip_cfg, clip_ckpt = write_tiny_open_clip(folder)
    vit_kwargs, vit_ckpt = write_tiny_vit(folder)
    return {"alex": save_features_state(folder / "alex.safetensors", "alexnet"),
            "squeeze": save_features_state(folder / "squeeze.safetensors", "squeezenet1_1"),
            "clip_cfg": clip_cfg, "clip_ckpt": clip_ckpt, "vit_kwargs": vit_kwargs, "vit_ckpt": vit_ckpt,
            "hf_clip": write_tiny_hf_clip(folder / "hf")}


def quantized(image: torch.Tensor) -> torch.Tensor:
    """Round to the 8-bit grid, as every stored (PNG) image is."""
    return ((image.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def make_input(seed: int, size: int = 64, mask: torch.Tensor | None = None, target_prompt: str = "a cat on grass",
               source_prompt: str = "a dog on grass", change: float = 0.3) -> MetricInput:
    g = torch.Generator().manual_seed(seed)
    source = quantized(torch.rand(3, size, size, generator=g) * 2 - 1)
    edited = quantized(source + change * torch.randn(3, size, size, generator=g))
    item = EditItem(item_id=f"i{seed}", image_id=f"img{seed}", image_path="unused.png", source_prompt=source_prompt,
                    target_prompt=target_prompt, blend_words=("dog", "cat"))
    return MetricInput(source=source, edited=edited, item=item, mask=mask)


def box_mask(size: int = 64, lo: int = 16, hi: int = 40) -> torch.Tensor:
    mask = torch.zeros(size, size)
    mask[lo:hi, lo:hi] = 1.0
    return mask


# ----------------------------------------------------------------------------------------------
# independent references

def features_module(arch: str, path: Path) -> torch.nn.Sequential:
    import torchvision
    from safetensors.torch import load_file

    net = getattr(torchvision.models, arch)(weights=None).features
    net.load_state_dict({k[len("features."):]: v for k, v in load_file(str(path)).items()})
    return net.eval()


LPIPS_TAPS = {"alexnet": (1, 4, 7, 9, 11), "squeezenet1_1": (1, 4, 7, 9, 10, 11, 12)}


def reference_lpips(x: torch.Tensor, y: torch.Tensor, arch: str, path: Path, lin_file: Path,
                    eps_mode: str = "lpips") -> torch.Tensor:
    """LPIPS (Zhang et al. 2018, v0.1): scale, backbone taps, unit-normalise channels, squared difference,
    1×1 linear weights, spatial mean, sum over layers."""
    shift = torch.tensor([-0.030, -0.088, -0.188])[None, :, None, None]
    scale = torch.tensor([0.458, 0.448, 0.450])[None, :, None, None]
    net = features_module(arch, path)
    lins = torch.load(lin_file, map_location="cpu", weights_only=True)
    weights = [lins[f"lin{k}.model.1.weight"] for k in range(len(LPIPS_TAPS[arch]))]

    def taps(img):
        out, h = [], (img - shift) / scale
        for i, layer in enumerate(net[: LPIPS_TAPS[arch][-1] + 1]):
            h = layer(h)
            if i in LPIPS_TAPS[arch]:
                out.append(h.clone())
        return out

    def unit(f):
        if eps_mode == "lpips":  # lpips package: f / (‖f‖ + 1e-10)
            return f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        return f / (f.pow(2).sum(1, keepdim=True) + 1e-8).sqrt()  # torchmetrics: f / √(‖f‖² + 1e-8)

    with torch.no_grad():
        total = 0
        for w, a, b in zip(weights, taps(x), taps(y)):
            total = total + F.conv2d((unit(a) - unit(b)) ** 2, w).mean((1, 2, 3))
    return total


def lpips_lin_file(net: str) -> Path:
    import lpips

    return Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"


def torchmetrics_lin_file(net: str) -> Path:
    import torchmetrics.functional.image.lpips as tm

    return Path(tm.__file__).parent / "lpips_models" / f"{net}.pth"


# ----------------------------------------------------------------------------------------------
# LPIPS family

def test_lpips_alex_matches_reference_and_is_zero_for_identical(weights):
    from bench.metrics.lpips_metrics import LpipsDistance

    metric = LpipsDistance(net="alex", backbone_path=str(weights["alex"]))
    batch = [make_input(0), make_input(1)]
    values = metric.score(batch)
    ref = reference_lpips(torch.stack([b.edited for b in batch]), torch.stack([b.source for b in batch]),
                          "alexnet", weights["alex"], lpips_lin_file("alex"))
    assert torch.allclose(torch.tensor(values), ref, atol=TOL, rtol=0)
    assert values[0] > 0.0
    same = make_input(2)
    same.edited = same.source.clone()
    assert metric.score([same]) == [0.0]
    assert metric.id == "lpips_alex" and metric.higher_is_better is False
    assert metric.backbone.startswith("lpips:alex:sha256=")


def test_lpips_backbone_loader_rejects_a_wrong_state_dict(tmp_path, weights):
    from bench.metrics.lpips_metrics import LpipsDistance

    metric = LpipsDistance(net="vgg", backbone_path=str(weights["alex"]))  # AlexNet weights for a VGG LPIPS
    with pytest.raises(ValueError, match="not a torchvision state dict"):
        metric.score([make_input(0)])


def test_recon_lpips_only_on_reconstruction_items(weights):
    from bench.metrics.lpips_metrics import ReconLpips

    metric = ReconLpips(backbone_path=str(weights["alex"]))
    recon = make_input(0, target_prompt="a dog on grass")
    edit = make_input(1)
    values = metric.score([recon, edit])
    ref = reference_lpips(recon.edited[None], recon.source[None], "alexnet", weights["alex"], lpips_lin_file("alex"))
    assert abs(values[0] - float(ref)) <= TOL and math.isnan(values[1])


def _pil_resize_unit(image: torch.Tensor, size: int) -> torch.Tensor:
    array = ((image + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    pil = Image.fromarray(array).resize((size, size), Image.BILINEAR)
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0).permute(2, 0, 1)


def test_ns_lpips_gt_matches_reference_and_ignores_the_edit_region(weights):
    from bench.metrics.lpips_metrics import NsLpipsGt

    metric = NsLpipsGt(backbone_path=str(weights["alex"]), resolution=32)
    mask = box_mask()
    inp = make_input(3, mask=mask)
    value = metric.score([inp])[0]
    # reference: 1 − binary mask (nearest to 32²), images PIL-bilinear to 32², [-1, 1], LPIPS-alex
    bg = 1 - (F.interpolate(mask[None, None], size=(32, 32), mode="nearest")[0] > 0.5).float()
    src = (_pil_resize_unit(inp.source, 32) * 2 - 1) * bg
    edt = (_pil_resize_unit(inp.edited, 32) * 2 - 1) * bg
    ref = reference_lpips(src[None], edt[None], "alexnet", weights["alex"], lpips_lin_file("alex"))
    assert abs(value - float(ref)) <= TOL

    # a change confined to the mask (with a margin for the bilinear resize) is invisible ...
    inside = make_input(3, mask=mask)
    inside.edited = inside.source.clone()
    inside.edited[:, 20:36, 20:36] = quantized(-inside.source[:, 20:36, 20:36])
    assert metric.score([inside]) == [0.0]
    # ... a change outside is seen
    outside = make_input(3, mask=mask)
    outside.edited = outside.source.clone()
    outside.edited[:, 48:60, 2:14] = quantized(-outside.source[:, 48:60, 2:14])
    assert metric.score([outside])[0] > 1e-4


def test_ns_lpips_nan_without_background_or_mask(weights):
    from bench.metrics.lpips_metrics import NsLpipsGt

    metric = NsLpipsGt(backbone_path=str(weights["alex"]), resolution=32)
    full = make_input(0, mask=torch.ones(64, 64))  # everything edited → empty background
    none = make_input(1, mask=None)
    ok = make_input(2, mask=box_mask())
    values = metric.score([full, none, ok])
    assert math.isnan(values[0]) and math.isnan(values[1]) and values[2] > 0


def test_ns_lpips_sd_formula_with_a_given_soft_mask(weights):
    """StyleDiffusion's metric step: [0,1] inputs (no normalize) × grey soft mask, LPIPS-alex."""
    from bench.metrics.lpips_metrics import NsLpipsSd

    metric = NsLpipsSd(backbone_path=str(weights["alex"]), resolution=32)
    soft = torch.linspace(0, 1, 32)[None, :, None].expand(1, 32, 32).contiguous()

    metric.prepare = lambda _inputs: None  # the mask generation is tested in test_metric_stage.py
    metric.background_mask = lambda _inp: soft
    inp = make_input(4)
    value = metric.score([inp])[0]
    ref = reference_lpips((_pil_resize_unit(inp.source, 32) * soft)[None], (_pil_resize_unit(inp.edited, 32) * soft)[None],
                          "alexnet", weights["alex"], lpips_lin_file("alex"))
    assert abs(value - float(ref)) <= TOL
    no_words = make_input(5)
    no_words.item = EditItem(item_id="x", image_id="x", image_path="x.png", source_prompt="a", target_prompt="b")
    assert math.isnan(metric.score([no_words])[0])


# ----------------------------------------------------------------------------------------------
# PIE-Bench background metrics

def _pie_pair(inp: MetricInput) -> tuple[torch.Tensor, torch.Tensor]:
    to01 = lambda x: ((x + 1) * 127.5).round() / 255.0  # noqa: E731  (np.array(img)/255)
    keep = 1 - inp.mask
    return to01(inp.source) * keep, to01(inp.edited) * keep


def reference_ssim(x: torch.Tensor, y: torch.Tensor) -> float:
    """Gaussian SSIM (Wang et al. 2004; torchmetrics defaults: 11×11, σ=1.5, K=(0.01, 0.03), data range 1,
    reflect padding, border of 5 cropped before the mean)."""
    k = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(k**2) / (2 * 1.5**2))
    g = g / g.sum()
    kernel = (g[:, None] @ g[None, :]).expand(3, 1, 11, 11)
    x, y = x[None].double(), y[None].double()
    stack = torch.cat([x, y, x * x, y * y, x * y])
    out = F.conv2d(F.pad(stack, (5, 5, 5, 5), mode="reflect"), kernel, groups=3)
    mx, my, sxx, syy, sxy = out.split(1)
    sxx, syy, sxy = sxx - mx**2, syy - my**2, sxy - mx * my
    c1, c2 = 0.01**2, 0.03**2
    ssim = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx**2 + my**2 + c1) * (sxx + syy + c2))
    return float(ssim[..., 5:-5, 5:-5].mean())


def test_pie_background_metrics_match_references():
    from bench.metrics.pie_background import BgMsePie, BgPsnrPie, BgSsimPie

    inp = make_input(6, mask=box_mask())
    src, edt = _pie_pair(inp)
    mse = float(((src.double() - edt.double()) ** 2).mean())
    assert abs(BgMsePie().score([inp])[0] - mse) <= TOL
    assert abs(BgPsnrPie().score([inp])[0] - 10 * math.log10(1.0 / mse)) <= 1e-4  # dB, float32 in torchmetrics
    assert abs(BgSsimPie().score([inp])[0] - reference_ssim(src, edt)) <= 1e-5
    # the masking semantics: pixels inside the mask do not matter at all
    moved = make_input(6, mask=box_mask())
    moved.edited[:, 20:36, 20:36] = -1.0
    for metric in (BgMsePie(), BgPsnrPie(), BgSsimPie()):
        assert metric.score([moved]) == metric.score([inp])


def test_bg_lpips_pie_uses_torchmetrics_squeeze_semantics(weights):
    from bench.metrics.pie_background import BgLpipsPie

    inp = make_input(7, mask=box_mask())
    value = BgLpipsPie(backbone_path=str(weights["squeeze"])).score([inp])[0]
    src, edt = _pie_pair(inp)
    ref = reference_lpips((src * 2 - 1)[None], (edt * 2 - 1)[None], "squeezenet1_1", weights["squeeze"],
                          torchmetrics_lin_file("squeeze"), eps_mode="torchmetrics")
    assert abs(value - float(ref)) <= TOL


def test_distances_are_zero_and_similarities_maximal_for_identical_images(weights):
    from bench.metrics.pie_background import BgLpipsPie, BgMsePie, BgPsnrPie, BgSsimPie, ReconPsnr

    inp = make_input(8, mask=box_mask(), target_prompt="a dog on grass")
    inp.edited = inp.source.clone()
    assert BgMsePie().score([inp]) == [0.0]
    assert BgLpipsPie(backbone_path=str(weights["squeeze"])).score([inp]) == [0.0]
    assert BgPsnrPie().score([inp]) == [math.inf] and ReconPsnr().score([inp]) == [math.inf]
    assert abs(BgSsimPie().score([inp])[0] - 1.0) <= 1e-6


def test_empty_background_gives_nan_and_the_mean_skips_it():
    from bench.metrics.pie_background import BgMsePie, BgPsnrPie
    from bench.metrics.registry import mean_skipping_nan

    full = make_input(0, mask=torch.ones(64, 64))  # (1 − mask).sum() == 0 → "nan" in the reference
    nomask = make_input(1)
    good = [make_input(2, mask=box_mask()), make_input(3, mask=box_mask())]
    values = BgPsnrPie().score([full, nomask, *good])
    assert math.isnan(values[0]) and math.isnan(values[1])
    mean, used, skipped = mean_skipping_nan(values)
    assert (used, skipped) == (2, 2) and abs(mean - (values[2] + values[3]) / 2) < 1e-12
    assert mean_skipping_nan([None, float("nan")])[1:] == (0, 2) and math.isnan(mean_skipping_nan([])[0])
    assert BgMsePie().score([full]) != [0.0]


def test_recon_psnr_reference():
    from bench.metrics.pie_background import ReconPsnr

    recon = make_input(9, target_prompt="a dog on grass")
    a, b = (recon.edited.double() + 1) / 2, (recon.source.double() + 1) / 2
    assert abs(ReconPsnr().score([recon])[0] - 10 * math.log10(1 / float(((a - b) ** 2).mean()))) <= 1e-4
    assert math.isnan(ReconPsnr().score([make_input(10)])[0])


# ----------------------------------------------------------------------------------------------
# CLIP

def test_clip_score_open_clip_matches_reference(weights):
    import open_clip
    from torchvision import transforms

    from bench.metrics.clip_metrics import ClipScore

    metric = ClipScore(model=TINY_CLIP_NAME, pretrained=None, checkpoint=str(weights["clip_ckpt"]),
                       model_config=str(weights["clip_cfg"]))
    batch = [make_input(0, target_prompt="a [red] cat"), make_input(1, target_prompt="a dog")]
    values = metric.score(batch)
    # reference: bicubic resize + centre crop to 32, OpenAI mean/std, encoders, 100·cos (no clipping)
    model = open_clip.create_model(TINY_CLIP_NAME, pretrained=str(weights["clip_ckpt"])).eval()
    prep = transforms.Compose([transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC),
                               transforms.CenterCrop(32), transforms.ToTensor(),
                               transforms.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])
    pils = [Image.fromarray(((b.edited + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()) for b in batch]
    tokens = open_clip.get_tokenizer(TINY_CLIP_NAME)(["a red cat", "a dog"])
    with torch.no_grad():
        img = model.encode_image(torch.stack([prep(p) for p in pils]))
        txt = model.encode_text(tokens)
    ref = 100 * F.cosine_similarity(img, txt, dim=-1)
    assert torch.allclose(torch.tensor(values), ref, atol=1e-4, rtol=0)  # 100× scale: 1e-6 relative
    assert metric.backbone.startswith(f"open_clip:{TINY_CLIP_NAME}:sha256=")


def test_clip_score_pie_matches_torchmetrics_semantics(weights):
    from transformers import CLIPModel, CLIPProcessor

    from bench.metrics.clip_metrics import ClipScoreEditPie, ClipScorePie

    path = str(weights["hf_clip"])
    batch = [make_input(i, mask=box_mask(), target_prompt=p) for i, p in enumerate(["a [red] cat", "a dog", "trees"])]
    values = ClipScorePie(model=path).score(batch)
    edit_values = ClipScoreEditPie(model=path).score(batch + [make_input(5, mask=torch.zeros(64, 64))])

    model, processor = CLIPModel.from_pretrained(path).eval(), CLIPProcessor.from_pretrained(path)

    def reference(image_u8: torch.Tensor, text: str) -> float:
        pixels = processor(images=[image_u8], return_tensors="pt")["pixel_values"]
        ids = processor(text=[text], return_tensors="pt")["input_ids"]
        with torch.no_grad():
            img = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            txt = model.text_projection(model.text_model(input_ids=ids).pooler_output)
        return max(100 * float(F.cosine_similarity(img, txt)), 0.0)  # torchmetrics: max(100·cos, 0)

    u8 = lambda x: ((x + 1) * 127.5).round().to(torch.uint8)  # noqa: E731
    texts = ["a red cat", "a dog", "trees"]
    for b, text, value, edit_value in zip(batch, texts, values, edit_values):
        assert abs(value - reference(u8(b.edited), text)) <= 1e-4
        masked = (u8(b.edited).double() * b.mask.double()).to(torch.uint8)  # np.uint8(img * mask)
        assert abs(edit_value - reference(masked, text)) <= 1e-4
        assert value >= 0.0
    assert math.isnan(edit_values[3])  # empty edit mask → NaN


# ----------------------------------------------------------------------------------------------
# Structure distance

def reference_structure_dist(checkpoint: Path, edited: torch.Tensor, source: torch.Tensor, byte_range: bool) -> float:
    """Splice: resize (bilinear, no antialias) → ImageNet normalise → last block: keys = LN1(x)·W_kᵀ + b_k
    (rows C..2C of the qkv projection, i.e. heads concatenated) → cosine self-similarity → MSE."""
    import timm
    from safetensors.torch import load_file

    model = timm.create_model("vit_base_patch8_224", pretrained=False, **TINY_VIT)
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    block = model.blocks[-1]
    dim = block.attn.qkv.in_features

    def sim(image):
        x = ((image + 1) * 127.5).round()
        x = x if byte_range else x / 255
        x = F.interpolate(x[None], size=(32, 32), mode="bilinear", align_corners=False, antialias=False)
        x = (x - mean) / std
        seen = {}
        handle = block.norm1.register_forward_hook(lambda m, i, o: seen.update(ln=o))
        with torch.no_grad():
            model(x)
        handle.remove()
        keys = seen["ln"][0] @ block.attn.qkv.weight[dim: 2 * dim].T + block.attn.qkv.bias[dim: 2 * dim]
        n = keys.norm(dim=1, keepdim=True)
        return (keys @ keys.T) / torch.clamp(n @ n.T, min=1e-8)

    with torch.no_grad():
        return float(((sim(edited) - sim(source)) ** 2).mean())


@pytest.mark.parametrize("pie", [False, True])
def test_structure_dist_matches_reference(weights, pie):
    from bench.metrics.structure import StructureDist, StructureDistPie

    cls = StructureDistPie if pie else StructureDist
    metric = cls(model="vit_base_patch8_224", checkpoint=str(weights["vit_ckpt"]),
                 model_kwargs_json=str(weights["vit_kwargs"]), resize=32, max_size=None)
    batch = [make_input(0), make_input(1)]
    values = metric.score(batch)
    for b, v in zip(batch, values):
        assert abs(v - reference_structure_dist(weights["vit_ckpt"], b.edited, b.source, byte_range=pie)) <= TOL
    same = make_input(2)
    same.edited = same.source.clone()
    assert metric.score([same]) == [0.0]
    assert metric.id == ("structure_dist_pie" if pie else "structure_dist")


def test_structure_dist_key_layout_matches_timm_attention(weights):
    """The hook-based extraction equals the k that timm's Attention computes internally."""
    import timm
    from safetensors.torch import load_file

    from bench.metrics.structure import last_block_keys

    model = timm.create_model("vit_base_patch8_224", pretrained=False, **TINY_VIT)
    model.load_state_dict(load_file(str(weights["vit_ckpt"])))
    model.eval()
    attn = model.blocks[-1].attn
    captured = {}
    handle = attn.register_forward_hook(lambda m, i, o: captured.update(x=i[0]))
    images = torch.randn(2, 3, 32, 32)
    keys = last_block_keys(model, images)
    handle.remove()
    b, n, c = captured["x"].shape
    _, k, _ = attn.qkv(captured["x"]).reshape(b, n, 3, attn.num_heads, c // attn.num_heads).unbind(2)  # (B,N,H,d)
    assert keys.shape == (2, 1 + 16, c)  # CLS kept
    assert torch.allclose(keys, k.reshape(b, n, c), atol=1e-6)
