"""``experiment=ef_noise_statistics``: the EF-DDPM paper's statistics of edit-friendly vs native noise maps.

For every image: the noise maps z_1..z_T of the EF inversion (x_0 noised independently per step) and of
the naive inversion (the forward Markov chain), both cached like the edit runner's, and native generation
noise z_t ~ N(0, I) of the same shape. Per timestep t_n and image, pixelwise over the latent's C·H·W
values: the variance of z_n, and the Pearson correlation between z_n and z_{n−1}. Reported: mean and
standard deviation over images, the figure (both curves, three noise kinds), and the paper's two claims
(EF noise has a larger variance than native noise; consecutive EF maps are negatively correlated) with
the measured verdicts.

Sampling tolerance: for one map of n i.i.d. N(0, 1) values the sample variance has standard deviation
√(2/n) and the correlation of two independent maps 1/√n; averaged over k images these shrink by √k.
A claim counts at a timestep only when the difference exceeds 3 of those standard deviations.
"""

from __future__ import annotations

import math

import pandas as pd
import torch

from bench.analyses.output import pyplot

KINDS = ("EF", "naive", "native")


def per_step_statistics(zs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """zs (T, …) with zs[n−1] = z_n → (variance (T,) of each map's values, correlation (T−1,) between z_n
    and z_{n−1} for n = 2…T), both over the values of a map (population moments, float64)."""
    flat = zs.flatten(1).double()
    centred = flat - flat.mean(dim=1, keepdim=True)
    variance = centred.pow(2).mean(dim=1)
    covariance = (centred[1:] * centred[:-1]).mean(dim=1)
    return variance, covariance / (variance[1:] * variance[:-1]).sqrt()


def sampling_tolerance(values_per_map: int, maps: int, sigmas: float = 3.0) -> tuple[float, float]:
    """(variance, correlation) tolerances: ``sigmas`` standard deviations of the mean over ``maps`` maps
    of the sample variance / correlation of ``values_per_map`` i.i.d. N(0, 1) values."""
    scale = sigmas / math.sqrt(values_per_map * maps)
    return scale * math.sqrt(2.0), scale


class NoiseStatistics:
    def __init__(self, baseline: str = "ddpm_naive"):
        self.baseline = baseline

    def run(self, ctx) -> dict:
        ef, ef_scheduler, ef_label = ctx.method
        naive, naive_scheduler, naive_label = ctx.baseline(self.baseline, same_hparams=True)
        items = ctx.items()
        variances: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
        correlations: dict[str, list[torch.Tensor]] = {k: [] for k in KINDS}
        timesteps = None
        for item in items:
            image, sha = ctx.source(item)
            codes = {"EF": ctx.inversion(ef, ef_label, ef_scheduler, item, image, sha),
                     "naive": ctx.inversion(naive, naive_label, naive_scheduler, item, image, sha)}
            zs = {kind: inv.tensors["zs"].float().cpu() for kind, inv in codes.items()}
            zs["native"] = torch.randn(zs["EF"].shape, generator=ctx.generator("native", sha))
            timesteps = codes["EF"].meta["timesteps"]
            for kind in KINDS:
                variance, correlation = per_step_statistics(zs[kind])
                variances[kind].append(variance)
                correlations[kind].append(correlation)
        values_per_map = zs["EF"][0].numel()
        table = self.table(timesteps, variances, correlations)
        var_tol, corr_tol = sampling_tolerance(values_per_map, len(items))
        claims = self.claims(table, var_tol, corr_tol)

        section = ctx.section
        section.text(f"{len(items)} image(s) of {ctx.cfg.dataset._target_.rsplit('.', 1)[-1]} on {ctx.cfg.model.name}; "
                     f"EF = {ef_label} {ef.hparams()}, naive = {naive_label} {naive.hparams()}; native = i.i.d. "
                     f"N(0, I) of the same shape ({values_per_map} values per map). Statistics per map, mean ± std "
                     "over images; z_1 (t = the smallest timestep) is the map the references zero at edit time.")
        display = table[["t"]].copy()
        for stat in ("var", "corr"):
            for kind in KINDS:
                display[f"{kind} {stat}"] = [f"{m:.4g} ± {s:.2g}" if pd.notna(m) else "" for m, s in
                                             zip(table[f"{kind}_{stat}_mean"], table[f"{kind}_{stat}_std"])]
        section.table(table, "per_timestep", "Per timestep: variance of z_t and correlation of z_t with z_{t−1} "
                      "(pixelwise over the latent; mean ± std over images)", display=display)
        section.figure(self.figure(table), "noise_statistics",
                       "Variance of z_t (left, log scale) and correlation between z_t and z_{t−1} (right) per "
                       "timestep; band = ± one std over images.")
        for claim in claims:
            section.text(claim)
        return {"table": table, "claims": claims}

    @staticmethod
    def table(timesteps, variances, correlations) -> pd.DataFrame:
        frame = pd.DataFrame({"t": list(timesteps)})
        for kind in KINDS:
            var = torch.stack(variances[kind])  # (images, T)
            corr = torch.stack(correlations[kind])  # (images, T−1): entry n−2 pairs z_n with z_{n−1}
            corr = torch.cat([torch.full((corr.shape[0], 1), float("nan"), dtype=corr.dtype), corr], dim=1)
            frame[f"{kind}_var_mean"], frame[f"{kind}_var_std"] = _mean_std(var)
            frame[f"{kind}_corr_mean"], frame[f"{kind}_corr_std"] = _mean_std(corr)
        return frame.iloc[::-1].reset_index(drop=True)  # t descending, as the reverse process runs

    @staticmethod
    def claims(table: pd.DataFrame, var_tol: float, corr_tol: float) -> list[str]:
        larger = table["EF_var_mean"] > table["native_var_mean"] + var_tol
        pairs = table["EF_corr_mean"].notna()
        negative = table.loc[pairs, "EF_corr_mean"] < -corr_tol
        verdict = {True: "HOLDS", False: "DOES NOT HOLD"}
        return [
            (f"Claim 1 (EF noise has a larger variance than native noise): {verdict[bool(larger.sum() > len(table) / 2)]} "
            f"on this model: EF variance exceeds native by more than {var_tol:.2g} at {int(larger.sum())}/{len(table)} "
            f"timesteps; median over timesteps EF {table['EF_var_mean'].median():.4g}, naive "
            f"{table['naive_var_mean'].median():.4g}, native {table['native_var_mean'].median():.4g}."),
            (f"Claim 2 (consecutive EF noise maps are negatively correlated): "
            f"{verdict[bool(negative.sum() > pairs.sum() / 2)]} on this model: correlation below −{corr_tol:.2g} at "
            f"{int(negative.sum())}/{int(pairs.sum())} consecutive pairs; median EF "
            f"{table.loc[pairs, 'EF_corr_mean'].median():.4g}, naive {table.loc[pairs, 'naive_corr_mean'].median():.4g}, "
            f"native {table.loc[pairs, 'native_corr_mean'].median():.4g}."),
        ]

    @staticmethod
    def figure(table: pd.DataFrame):
        plt = pyplot()
        figure, axes = plt.subplots(1, 2, figsize=(11, 4))
        for kind, color in zip(KINDS, ("tab:red", "tab:blue", "tab:gray")):
            for axis, stat in zip(axes, ("var", "corr")):
                mean, std = table[f"{kind}_{stat}_mean"], table[f"{kind}_{stat}_std"]
                axis.plot(table["t"], mean, color=color, label=kind)
                axis.fill_between(table["t"], mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        axes[0].set_yscale("log")
        axes[0].set_ylabel("variance of z_t")
        axes[1].set_ylabel("corr(z_t, z_{t−1})")
        axes[1].axhline(0.0, color="black", linewidth=0.6)
        for axis in axes:
            axis.set_xlabel("timestep t")
            axis.invert_xaxis()
            axis.grid(True, alpha=0.3)
            axis.legend()
        figure.tight_layout()
        return figure


def _mean_std(values: torch.Tensor) -> tuple[list[float], list[float]]:
    std = values.std(dim=0, unbiased=True) if values.shape[0] > 1 else torch.zeros(values.shape[1], dtype=values.dtype)
    return values.mean(dim=0).tolist(), std.tolist()
