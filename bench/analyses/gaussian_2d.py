"""``experiment=ef_gaussian_2d``: the EF-DDPM paper's 2-D illustration of native vs edit-friendly noise.

Data x_0 ~ N(m, I) in 2-D (m = (10, 10)ᵀ by default). With x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε every marginal is
x_t ~ N(√ᾱ_t m, I), so the MMSE noise predictor is exact and closed-form:

    ε̂(x_t) = E[ε | x_t] = √(1−ᾱ_t) (x_t − √ᾱ_t m)

(``GaussianDenoiser``: no network, no weights). It stands in for the pipeline, so the experiment's method
(EF-DDPM with its configured T, η and SD's ᾱ schedule from its scheduler config) runs its own
``invert`` / ``edit_latents`` code unchanged; N points are the N "pixels" of a 2-channel latent
(1, 2, N, 1), every operation being per pixel.

Three noise kinds, each drawn as x_{t−1} = μ̂_t(x_t) + η σ_t z_t (μ̂ blue, η σ_t z_t red in the figure):
native DDPM sampling from x_T ~ N(0, I) with z_t ~ N(0, I); the naive inversion of the sampled x_0 (the
forward Markov chain); the EF inversion of the same x_0 (independent noising). Table: mean ‖z_t‖, mean
cosine between consecutive z_t, z_{t−1}, and each inversion's reconstruction error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
import torch

from bench.analyses.output import pyplot
from bench.data.item import EditItem
from methods.base import Inversion
from methods.steps import alpha_bar, ef_mean

ITEM = EditItem(item_id="gaussian_2d", image_id="gaussian_2d", image_path="-", source_prompt="", target_prompt="")


@dataclass
class GaussianDenoiser:
    """The parts of ``EditPipeline`` the DDPM-noise-space methods use, for Gaussian data N(m, I)."""

    scheduler: object
    mean: torch.Tensor  # m, shape (C,)
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        return torch.zeros(len(prompts), 1, 1)  # unconditional: every prompt gives the same ε̂

    def unet_eps(self, latents: torch.Tensor, t, text_embeddings: torch.Tensor) -> torch.Tensor:
        a_t = alpha_bar(self.scheduler, t).to(latents)
        m = self.mean.to(latents).view(1, -1, *([1] * (latents.dim() - 2)))
        return (1 - a_t).sqrt() * (latents - a_t.sqrt() * m)


def recorded_reverse(method, pipe, inversion: Inversion) -> tuple[torch.Tensor, list[dict]]:
    """Run ``method.reconstruction()`` over ``inversion``; returns x_0 and per step n = T…1 the dict
    {x_t, mu (μ̂_t(x_t)), noise (η σ_t z_t), z}."""
    method = method.reconstruction()
    steps: list[dict] = []

    def record(n, t, x_t, eps, z):
        mu = ef_mean(pipe.scheduler, x_t, eps, t, method.eta)
        steps.append({"n": n, "x_t": x_t.clone(), "mu": mu, "z": z})
        return z

    x0 = method.edit_latents(pipe, inversion, ITEM, z_hook=record)
    for k, step in enumerate(steps):  # the noise part is what takes μ̂_t to the next point of the path
        step["noise"] = (steps[k + 1]["x_t"] if k + 1 < len(steps) else x0) - step["mu"]
    return x0, steps


def native_codes(x_T: torch.Tensor, zs: torch.Tensor) -> Inversion:
    """Native generation noise as an ``Inversion``: the reverse process reads x_T (index T) and the z's only,
    the other x̃ are NaN so that any other use is loud."""
    xts = torch.full((zs.shape[0] + 1, *x_T.shape[1:]), float("nan"), dtype=x_T.dtype)
    xts[-1] = x_T[0]
    return Inversion({"xts": xts, "zs": zs})


def z_geometry(zs: torch.Tensor) -> tuple[float, float]:
    """(mean ‖z_t‖, mean cos(z_t, z_{t−1})) over steps and points of zs (T, 2, N, 1)."""
    vectors = zs.squeeze(-1).transpose(1, 2).double()  # (T, N, 2)
    norms = vectors.norm(dim=-1)
    cos = torch.nn.functional.cosine_similarity(vectors[1:], vectors[:-1], dim=-1)
    return float(norms.mean()), float(cos.mean())


class Gaussian2D:
    def __init__(self, mean: list[float] = (10.0, 10.0), num_points: int = 1000, arrows: int = 2,
                 baseline: str = "ddpm_naive"):
        if num_points < 2 or arrows < 1 or arrows > num_points:
            raise ValueError(f"analysis.num_points={num_points}, analysis.arrows={arrows}: expected "
                             "num_points >= 2 and 1 <= arrows <= num_points")
        self.mean = torch.tensor([float(v) for v in mean])
        self.num_points, self.arrows, self.baseline = int(num_points), int(arrows), baseline

    def run(self, ctx) -> dict:
        from bench.models import build_scheduler

        ef, scheduler_cfg, _ = ctx.method
        naive = ctx.baseline(self.baseline, same_hparams=True)[0]
        pipe = GaussianDenoiser(build_scheduler(dict(scheduler_cfg)), self.mean)
        T = num_steps(ef, pipe)
        generator = ctx.generator("native")
        x_T = torch.randn((1, 2, self.num_points, 1), generator=generator)
        native = native_codes(x_T, torch.randn((T, 2, self.num_points, 1), generator=generator))
        x0, native_steps = recorded_reverse(ef, pipe, native)
        kinds = {"native DDPM (z ~ N(0, I))": (native, native_steps, None)}
        for label, method in (("naive inversion", naive), ("EF inversion", ef)):
            inversion = method.invert(pipe, x0, "", ctx.generator(label))
            reconstruction, steps = recorded_reverse(method, pipe, inversion)
            kinds[label] = (inversion, steps, reconstruction)

        rows = []
        for label, (codes, _, reconstruction) in kinds.items():
            norm, cos = z_geometry(codes.tensors["zs"])
            error = float("nan") if reconstruction is None else float((reconstruction - x0).abs().max())
            exact = "" if reconstruction is None else str(bool(torch.equal(reconstruction, codes.tensors["xts"][:1])))
            rows.append({"noise": label, "mean ‖z_t‖": norm, "mean cos(z_t, z_t−1)": cos,
                         "max abs(x̂_0 − x_0)": error, "x̂_0 == inversion's x̃_0 (bitwise)": exact})
        table = pd.DataFrame(rows)
        section = ctx.section
        section.text(f"2-D data N(m, I), m = {self.mean.tolist()}, exact denoiser ε̂(x_t) = √(1−ᾱ_t)(x_t − √ᾱ_t m); "
                     f"{self.num_points} points; {type(ef).__name__} hyperparameters {ef.hparams()}, T = {T}; "
                     f"ᾱ from the scheduler config {scheduler_cfg}.")
        section.table(table, "z_geometry", "Noise maps of native sampling and of both inversions of the sampled x_0")
        section.figure(self.figure(kinds), "arrows",
                       f"Reverse steps of {self.arrows} point(s): μ̂_t(x_t) − x_t blue, η σ_t z_t red; left native "
                       "DDPM sampling, right the EF inversion of the same x_0 (both end at x_0). The dashed circle "
                       "marks N(m, I) at one standard deviation.")
        return {"table": table}

    def figure(self, kinds: dict):
        plt = pyplot()
        figure, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharex=True, sharey=True)
        for axis, label in zip(axes, ("native DDPM (z ~ N(0, I))", "EF inversion")):
            for point in range(self.arrows):
                for step in kinds[label][1]:
                    x, mu = step["x_t"][0, :, point, 0], step["mu"][0, :, point, 0]
                    noise = step["noise"][0, :, point, 0]
                    axis.annotate("", xy=mu.tolist(), xytext=x.tolist(),
                                  arrowprops={"arrowstyle": "->", "color": "tab:blue", "lw": 0.8})
                    axis.annotate("", xy=(mu + noise).tolist(), xytext=mu.tolist(),
                                  arrowprops={"arrowstyle": "->", "color": "tab:red", "lw": 0.8})
            axis.add_patch(plt.Circle(self.mean.tolist(), 1.0, fill=False, linestyle="--", color="gray"))
            axis.plot([0], [0], "k+")
            axis.set_title(label)
            axis.set_aspect("equal")
            axis.grid(True, alpha=0.3)
        axes[0].autoscale()
        return figure


def num_steps(method, pipe) -> int:
    """T of ``method``: the number of noise maps its own ``invert`` extracts (one point, cheap)."""
    return method.invert(pipe, torch.zeros(1, 2, 1, 1), "", torch.Generator("cpu").manual_seed(0)).tensors["zs"].shape[0]
