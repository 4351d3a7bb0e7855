"""PIE-Bench background ("unedit part") metrics and reconstruction PSNR.

Source: cure-lab/PnPInversion@f480116 ``evaluation/evaluate.py`` L40-59 and
``evaluation/matrics_calculator.py`` L275-278, L304-382 (docs/metrics.md#the-metrics):

- both images are read as uint8, scaled to [0, 1] and **multiplied by (1 − mask)** (edited pixels
  become 0 in both), then the metric runs on the **full** image (not a masked mean, which inflates
  PSNR/SSIM — kept on purpose for parity with the published table);
- the value is NaN ("nan" in the reference CSV) when the background is empty, ``(1 − mask).sum() == 0``;
  tables average with NaN skipped (``mean_skipping_nan``). An item without a mask is NaN too.

    bg_psnr_pie  = torchmetrics PSNR(data_range=1.0) per image                       (↑, ×1)
    bg_lpips_pie = torchmetrics LPIPS(net_type='squeeze') on x·2−1 ([-1, 1])          (↓, ×10³)
    bg_mse_pie   = torchmetrics MSE on CHW                                            (↓, ×10⁴)
    bg_ssim_pie  = torchmetrics SSIM(data_range=1.0) (gaussian 11, σ 1.5), map mean
                   without the 5-px border as torchmetrics < 1.5 did                  (↑, ×10²)

``recon_psnr``: PSNR(edited, source) on [0, 1] (data_range 1) for reconstruction items (target
prompt = source prompt), else NaN.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

from bench.images import to_uint8
from bench.metrics.backbones import LpipsBackbone
from bench.metrics.base import Metric, MetricInput
from bench.metrics.common import NAN, is_reconstruction


def _tm() -> SimpleNamespace:
    """torchmetrics' functional image/regression metrics, imported on first use: with scipy they cost
    seconds, and a job's preflight builds every metric (to find its weights) before anything is scored."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure
    from torchmetrics.functional.regression import mean_squared_error

    return SimpleNamespace(peak_signal_noise_ratio=peak_signal_noise_ratio, mean_squared_error=mean_squared_error,
                           structural_similarity_index_measure=structural_similarity_index_measure)


def unit_from_png(image: torch.Tensor) -> torch.Tensor:
    """(3,H,W) in [-1,1] → the reference's ``np.array(img).astype(float32) / 255`` (exact PNG bytes)."""
    return to_uint8(image).float() / 255.0


class _PieBackground(Metric):
    version = "1"

    def config(self) -> dict[str, Any]:
        return {"masking": "images*(1-mask), metric on the full image; NaN if (1-mask) empty"}

    def pairs(self, batch: list[MetricInput]) -> tuple[list[int], list[torch.Tensor], list[torch.Tensor]]:
        """Indices that apply and their masked (source, edited) pairs in [0, 1]."""
        idx, srcs, edts = [], [], []
        for i, inp in enumerate(batch):
            if inp.mask is None:
                continue
            keep = 1.0 - inp.mask.float().cpu()  # (H, W); the reference repeats the mask over RGB
            if float(keep.sum()) == 0:
                continue
            idx.append(i)
            srcs.append(unit_from_png(inp.source) * keep)
            edts.append(unit_from_png(inp.edited) * keep)
        return idx, srcs, edts

    def formula(self, src: torch.Tensor, edt: torch.Tensor) -> float:
        raise NotImplementedError

    def score(self, batch: list[MetricInput]) -> list[float]:
        values = [NAN] * len(batch)
        idx, srcs, edts = self.pairs(batch)
        for i, s, e in zip(idx, srcs, edts):
            values[i] = self.formula(s, e)
        return values


class BgPsnrPie(_PieBackground):
    id = "bg_psnr_pie"
    unit = "dB"
    higher_is_better = True
    display_scale = 1.0

    def formula(self, src, edt):
        # reference order: calculate_psnr(src_image, tgt_image, ...) → psnr(pred=src, target=tgt)
        return float(_tm().peak_signal_noise_ratio(src[None], edt[None], data_range=1.0))


class BgMsePie(_PieBackground):
    id = "bg_mse_pie"
    unit = "MSE of [0, 1] pixels"
    higher_is_better = False
    display_scale = 1e4

    def formula(self, src, edt):
        return float(_tm().mean_squared_error(src.contiguous(), edt.contiguous()))


class BgSsimPie(_PieBackground):
    """SSIM as torchmetrics computed it for PIE-Bench (releases < 1.5): the SSIM map is averaged without
    its 5-pixel border (the reflect-padded margin). torchmetrics 1.5 (PR #2721) started averaging the
    full map, which changes values; the map itself is unchanged, so the border is cropped here."""

    id = "bg_ssim_pie"
    unit = "SSIM"
    higher_is_better = True
    display_scale = 100.0
    SIGMA, PAD = 1.5, 5  # gaussian σ; pad = (int(3.5σ + 0.5)·2 + 1 − 1) // 2 = 5 (11×11 window)

    def __init__(self, crop_border: bool = True, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.crop_border = bool(crop_border)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "window": "gaussian 11, sigma 1.5", "crop_border": self.crop_border}

    def formula(self, src, edt):
        mean, full = _tm().structural_similarity_index_measure(src[None], edt[None], data_range=1.0, sigma=self.SIGMA,
                                                               return_full_image=True)
        if not self.crop_border:
            return float(mean)
        return float(full[..., self.PAD:-self.PAD, self.PAD:-self.PAD].mean())


class BgLpipsPie(_PieBackground):
    """torchmetrics' LPIPS (squeeze) — its ``_NoTrainLpips`` with the torchvision SqueezeNet 1.1
    backbone loaded from the resolved weights (the metric class itself would download them)."""

    id = "bg_lpips_pie"
    unit = "LPIPS distance"
    higher_is_better = False
    display_scale = 1000.0

    def __init__(self, net: str = "squeeze", backbone_path: str | None = None, id: str | None = None):  # noqa: A002
        super().__init__(id)
        self.net = net
        self.lpips_backbone = LpipsBackbone(net=net, path=backbone_path, flavor="torchmetrics")

    def backbones(self):
        return [self.lpips_backbone]

    def config(self) -> dict[str, Any]:
        return {**super().config(), "net": self.net, "inputs": "x*2-1"}

    def score(self, batch: list[MetricInput]) -> list[float]:
        values = [NAN] * len(batch)
        idx, srcs, edts = self.pairs(batch)
        if idx:
            model = self.load(self.lpips_backbone)
            with torch.no_grad():  # reference: lpips(img_pred*2-1, img_gt*2-1), normalize=False
                out = model(torch.stack(srcs).to(self.device) * 2 - 1, torch.stack(edts).to(self.device) * 2 - 1,
                            normalize=False)
            for i, v in zip(idx, out.reshape(-1).cpu()):
                values[i] = float(v)
        return values


class ReconPsnr(Metric):
    """PSNR(edited, source) in dB on [0, 1] images for reconstruction items; NaN otherwise."""

    id = "recon_psnr"
    unit = "dB"
    version = "1"
    higher_is_better = True
    display_scale = 1.0

    def config(self) -> dict[str, Any]:
        return {"data_range": 1.0, "only": "reconstruction items (target prompt == source prompt)"}

    def score(self, batch: list[MetricInput]) -> list[float]:
        out = []
        for inp in batch:
            if not is_reconstruction(inp):
                out.append(NAN)
                continue
            out.append(float(_tm().peak_signal_noise_ratio(unit_from_png(inp.edited)[None],
                                                           unit_from_png(inp.source)[None], data_range=1.0)))
        return out
