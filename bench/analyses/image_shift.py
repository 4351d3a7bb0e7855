"""``experiment=ef_image_shift``: the EF-DDPM paper's image shifting by shifting the noise maps.

For every image: invert with EF (independent noising) and with the naive forward chain, shift *all* noise
maps (x_T and every z_t) by k latent pixels to the right, regenerate with the source prompt and the
inversion's guidance (``reconstruction()``: from x_T, z_1 kept, so k = 0 returns the VAE reconstruction of
the source), and compare with the source shifted by k × (VAE factor) pixels.

Borders: the maps are shifted circularly (``torch.roll``); the k·f pixel columns that wrapped around have
no counterpart in the shifted source, so only the valid region (columns k·f … W−1) is scored: PSNR (dB,
[0, 1] scale) and LPIPS (the experiment's metric set) between the crops. The paper's claim: shifting
native codes destroys the structure, shifting EF codes degrades it only slightly.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch

from bench.analyses.output import pyplot
from bench.images import psnr
from bench.metrics.base import MetricInput
from bench.toyworld.metrics import MAX_DB
from methods.base import Inversion


def default_shifts(latent_size: int) -> list[int]:
    """k = 1, 2, 4, … up to max(4, latent_size / 8): 1, 2, 4 at 16² (toy), 1, 2, 4, 8 at 64² (SD)."""
    largest = max(4, latent_size // 8)
    return [2 ** i for i in range(largest.bit_length()) if 2 ** i <= min(largest, latent_size - 1)]


def shift_codes(inversion: Inversion, k: int) -> Inversion:
    """Every x̃_t and z_t rolled k latent pixels to the right (circularly)."""
    return Inversion({name: torch.roll(inversion.tensors[name], k, dims=-1) for name in ("xts", "zs")},
                     dict(inversion.meta))


def valid_region(image: torch.Tensor, pixels: int) -> torch.Tensor:
    """Columns ``pixels`` … W−1 of a (…, H, W) image: what a right shift by ``pixels`` keeps."""
    return image[..., pixels:]


class ImageShift:
    def __init__(self, shifts: list[int] | None = None, baseline: str = "ddpm_naive", lpips: str = "lpips_alex"):
        self.shifts, self.baseline, self.lpips = (None if shifts is None else [int(k) for k in shifts]), baseline, lpips

    def run(self, ctx) -> dict:
        methods = {"EF": ctx.method, "naive": ctx.baseline(self.baseline, same_hparams=True)}
        items = ctx.items()
        pipe = ctx.pipe
        shifts = self.shifts or default_shifts(pipe.latent_size)
        if any(k < 1 or k >= pipe.latent_size for k in shifts):
            raise ValueError(f"analysis.shifts={shifts}: expected latent shifts in [1, {pipe.latent_size - 1}]")
        factor, lpips = pipe.vae_scale_factor, ctx.metric(self.lpips)
        rows, shown = [], {}
        for index, item in enumerate(items):
            image, sha = ctx.source(item)
            source_item = dataclasses.replace(item, target_prompt=item.source_prompt)
            for kind, (method, scheduler_cfg, label) in methods.items():
                inversion = ctx.inversion(method, label, scheduler_cfg, item, image, sha)
                regenerate = method.reconstruction()
                for k in [0, *shifts]:
                    latents = regenerate.edit_latents(ctx.pipe_for(scheduler_cfg), shift_codes(inversion, k), source_item)
                    result = pipe.decode_latents(latents)[-1].cpu()
                    target = torch.roll(image[0].float().cpu(), k * factor, dims=-1)
                    crop_result, crop_target = valid_region(result, k * factor), valid_region(target, k * factor)
                    score = lpips.score([MetricInput(source=crop_target, edited=crop_result, item=item)])[0]
                    rows.append({"method": kind, "k": k, "item": item.item_id,
                                 "psnr": float(psnr(crop_result, crop_target, max_db=MAX_DB)), "lpips": score})
                    if index == 0:
                        shown[("target", k)], shown[(kind, k)] = target, result
        frame = pd.DataFrame(rows)
        table = (frame.groupby(["method", "k"], sort=False)
                 .agg(n=("psnr", "size"), psnr_mean=("psnr", "mean"), psnr_std=("psnr", "std"),
                      lpips_mean=("lpips", "mean"), lpips_std=("lpips", "std")).reset_index())
        table.insert(2, "pixels", table["k"] * factor)
        display = table[["method", "k", "pixels", "n"]].copy()
        display["PSNR ↑"] = [f"{m:.2f} ± {s:.2f}" for m, s in zip(table["psnr_mean"], table["psnr_std"].fillna(0))]
        display["LPIPS ↓"] = [f"{m:.4f} ± {s:.4f}" for m, s in zip(table["lpips_mean"], table["lpips_std"].fillna(0))]

        section = ctx.section
        section.text(f"{len(items)} image(s) on {ctx.cfg.model.name} (latent {pipe.latent_size}², VAE factor "
                     f"{factor}); EF = {methods['EF'][2]} {methods['EF'][0].hparams()}, naive = "
                     f"{methods['naive'][2]} {methods['naive'][0].hparams()}; all noise maps rolled k latent pixels "
                     f"to the right, regenerated from x_T with the source prompt; scored against the source shifted "
                     f"k·{factor} pixels on the valid region (the wrapped-around columns excluded); LPIPS = {lpips.id}.")
        section.table(table, "shift", "PSNR and LPIPS vs the shifted source per shift k (mean ± std over images; "
                      "k = 0 is the reconstruction)", display=display)
        section.figure(self.figure(shown, [0, *shifts]), "shift_grid",
                       f"{items[0].item_id}: the shifted source (top) and the regenerations from shifted EF and "
                       "naive noise maps, one column per k (latent pixels).")
        per = {(r["method"], r["k"]): r for r in table.to_dict("records")}
        for k in shifts:
            section.text(f"k = {k}: EF {per[('EF', k)]['psnr_mean']:.2f} dB / LPIPS {per[('EF', k)]['lpips_mean']:.4f}, "
                         f"naive {per[('naive', k)]['psnr_mean']:.2f} dB / LPIPS {per[('naive', k)]['lpips_mean']:.4f}.")
        return {"table": table, "rows": frame}

    @staticmethod
    def figure(shown: dict, ks: list[int]):
        from bench.images import to_uint8

        plt = pyplot()
        kinds = ("target", "EF", "naive")
        figure, axes = plt.subplots(len(kinds), len(ks), figsize=(2.2 * len(ks), 2.3 * len(kinds)), squeeze=False)
        for row, kind in enumerate(kinds):
            for col, k in enumerate(ks):
                axis = axes[row][col]
                axis.imshow(to_uint8(shown[(kind, k)]).permute(1, 2, 0).numpy())
                axis.set_xticks([])
                axis.set_yticks([])
                if row == 0:
                    axis.set_title(f"k = {k}")
                if col == 0:
                    axis.set_ylabel("shifted source" if kind == "target" else kind)
        figure.tight_layout()
        return figure
