"""The EF-DDPM noise-space analyses (bench/analyses, conf/experiment/ef_*.yaml): the statistics they compute,
the exact 2-D denoiser and the exactness of EF reconstruction through it, shifting and colour hooks, the
report hook, and a `debug=limit` smoke run of every analysis experiment on the tiny random SD-shaped pipeline
(SD v1.4's method defaults: the same code path as `model=sd14`)."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import yaml
from conftest import REPO_ROOT, SCHEDULER_OFFSET1, compose_config

from bench.analyses.color_manipulation import colour_hook
from bench.analyses.gaussian_2d import GaussianDenoiser, recorded_reverse
from bench.analyses.image_shift import default_shifts, shift_codes
from bench.analyses.noise_statistics import (
    NoiseStatistics,
    per_step_statistics,
    sampling_tolerance,
)
from bench.config import CONF_DIR
from bench.data.item import EditItem
from bench.models import build_scheduler
from methods.ef_ddpm import EFDDPM
from methods.steps import alpha_bar

ANALYSES = ["ef_color_manipulation", "ef_gaussian_2d", "ef_image_shift", "ef_noise_statistics"]
ITEM = EditItem(item_id="p", image_id="p", image_path="-", source_prompt="", target_prompt="")
SHAPE = (4, 16, 16)  # a toy latent: 1024 values per map
N = math.prod(SHAPE)


def gaussian_pipe(mean=(10.0, 10.0), steps: int = 50):
    pipe = GaussianDenoiser(build_scheduler(SCHEDULER_OFFSET1), torch.tensor(mean))
    pipe.scheduler.set_timesteps(steps)
    return pipe


def points(n: int, mean=(10.0, 10.0), seed: int = 0) -> torch.Tensor:
    """n draws of N(m, I) as the pixels of a (1, 2, n, 1) latent."""
    return torch.randn(1, 2, n, 1, generator=torch.Generator().manual_seed(seed)) + torch.tensor(mean).view(1, 2, 1, 1)


# ----------------------------------------------------------------------------------------------
# noise statistics


def test_iid_gaussian_noise_has_unit_variance_and_no_correlation():
    T, k = 30, 5  # maps per sequence, sequences
    var_tol, corr_tol = sampling_tolerance(N, T * k, sigmas=5.0)  # 5σ of the mean over all maps
    generator = torch.Generator().manual_seed(1)
    stats = [per_step_statistics(torch.randn(T, *SHAPE, generator=generator)) for _ in range(k)]
    variance = torch.stack([v for v, _ in stats])
    correlation = torch.stack([c for _, c in stats])
    assert variance.shape == (k, T) and correlation.shape == (k, T - 1)
    assert abs(float(variance.mean()) - 1.0) < var_tol
    assert abs(float(correlation.mean())) < corr_tol
    # every single map within 5σ of its own sampling distribution
    assert (variance - 1).abs().max() < 5 * math.sqrt(2 / N) and correlation.abs().max() < 5 / math.sqrt(N)


@pytest.mark.parametrize("rho", [-0.5, 0.3, 0.9])
def test_a_constructed_ar1_sequence_gives_its_correlation(rho):
    """z_n = ρ z_{n−1} + √(1−ρ²) w_n: corr(z_n, z_{n−1}) = ρ, variance 1; the sample correlation of n values
    has standard deviation (1 − ρ²)/√n."""
    generator = torch.Generator().manual_seed(2)
    zs = [torch.randn(SHAPE, generator=generator)]
    for _ in range(39):
        zs.append(rho * zs[-1] + math.sqrt(1 - rho**2) * torch.randn(SHAPE, generator=generator))
    variance, correlation = per_step_statistics(torch.stack(zs))
    assert (correlation - rho).abs().max() < 5 * (1 - rho**2) / math.sqrt(N)
    assert abs(float(correlation.mean()) - rho) < 5 * (1 - rho**2) / math.sqrt(N * 39)
    assert (variance - 1).abs().max() < 5 * math.sqrt(2 / N) * (1 + abs(rho))


def test_statistics_scale_and_sign_exactly():
    z = torch.randn(6, *SHAPE, generator=torch.Generator().manual_seed(3))
    variance, _ = per_step_statistics(z)
    scaled, _ = per_step_statistics(3 * z + 7)  # variance is centred and scales by 3²
    torch.testing.assert_close(scaled, 9 * variance, rtol=1e-5, atol=0)
    alternating = torch.stack([z[0] * (-1) ** n for n in range(6)])
    _, correlation = per_step_statistics(alternating)
    torch.testing.assert_close(correlation, torch.full((5,), -1.0, dtype=torch.float64), rtol=0, atol=1e-12)


def test_claims_verdicts_follow_the_measured_table():
    import pandas as pd

    table = pd.DataFrame({"t": [3, 2, 1], "EF_var_mean": [4.0, 4.0, 0.9], "native_var_mean": [1.0, 1.0, 1.0],
                          "naive_var_mean": [1.0, 1.0, 1.0], "EF_corr_mean": [-0.5, -0.4, float("nan")],
                          "naive_corr_mean": [0.0, 0.0, float("nan")], "native_corr_mean": [0.0, 0.0, float("nan")]})
    holds = NoiseStatistics.claims(table, 0.1, 0.05)
    assert "HOLDS" in holds[0] and "2/3 timesteps" in holds[0] and "HOLDS" in holds[1] and "2/2" in holds[1]
    table["EF_corr_mean"] = [0.2, -0.4, float("nan")]
    table["EF_var_mean"] = [1.05, 0.9, 0.9]
    fails = NoiseStatistics.claims(table, 0.1, 0.05)
    assert "DOES NOT HOLD" in fails[0] and "DOES NOT HOLD" in fails[1]


# ----------------------------------------------------------------------------------------------
# the 2-D Gaussian demo


def test_closed_form_denoiser_is_the_mmse_noise_predictor():
    """E[ε | x_t] for x_0 ~ N(m, I): the residual ε − ε̂(x_t) has zero mean and is uncorrelated with x_t."""
    pipe = gaussian_pipe()
    generator = torch.Generator().manual_seed(4)
    n = 200_000
    x0 = torch.randn(1, 2, n, 1, generator=generator) + 10.0
    eps = torch.randn(1, 2, n, 1, generator=generator)
    for t in (1, 301, 981):
        a = alpha_bar(pipe.scheduler, t)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
        residual = (eps - pipe.unet_eps(x_t, t, None)).double()
        assert residual.mean().abs() < 5 / math.sqrt(n)
        centred = (x_t - x_t.mean(dim=2, keepdim=True)).double()
        assert ((residual * centred).mean(dim=2).abs() < 5 * 2 / math.sqrt(n)).all()


def test_ef_inversion_with_the_exact_denoiser_reconstructs_x0():
    """The reverse process lands bitwise on the inversion's (written-back) path, and x̂_0 differs from x_0 by
    at most the rounding of z_1 = (x_0 − μ_1)/(ησ_1) followed by μ_1 + ησ_1 z_1 in float32:
    |x̂_0 − x_0| ≤ u (3 |x_0 − μ_1| + |x_0|) (+ O(u²)), u = 2⁻²⁴."""
    pipe = gaussian_pipe(steps=50)
    method = EFDDPM(num_steps=50)
    x0 = points(500)
    inversion = method.invert(pipe, x0, "", torch.Generator().manual_seed(5))
    reconstruction, steps = recorded_reverse(method, pipe, inversion)
    assert torch.equal(reconstruction, inversion.tensors["xts"][:1])
    xts = inversion.tensors["xts"]
    assert [step["n"] for step in steps] == list(range(50, 0, -1))
    for step in steps:  # x_n of the reverse process == x̃_n of the inversion, bitwise, at every step
        assert torch.equal(step["x_t"], xts[step["n"]][None])
    mu_1 = steps[-1]["mu"]
    u = 2.0 ** -24
    bound = u * (3 * (x0 - mu_1).abs() + x0.abs()) * (1 + 8 * u)
    assert ((reconstruction - x0).abs() <= bound).all()


def test_ef_noise_of_the_exact_denoiser_is_larger_than_native():
    """The geometry the figure shows, on the exact model: EF maps are longer than N(0, I) draws."""
    pipe = gaussian_pipe(steps=50)
    inversion = EFDDPM(num_steps=50).invert(pipe, points(500), "", torch.Generator().manual_seed(6))
    assert float(inversion.tensors["zs"][1:].norm(dim=1).mean()) > 2 * math.sqrt(math.pi / 2)


# ----------------------------------------------------------------------------------------------
# shifting and colour manipulation on the exact (pixelwise, hence shift-equivariant) model


def test_default_shift_grids():
    assert default_shifts(16) == [1, 2, 4] and default_shifts(64) == [1, 2, 4, 8]


def test_shifting_every_code_shifts_the_regenerated_latent_exactly():
    """The Gaussian denoiser acts per pixel, so shifting x_T and every z_t must shift x̂_0 bitwise; forgetting
    x_T or any z_t breaks it."""
    pipe = gaussian_pipe()
    method = EFDDPM(num_steps=50)
    x0 = points(64).view(1, 2, 8, 8)
    inversion = method.invert(pipe, x0, "", torch.Generator().manual_seed(7))
    base = method.reconstruction().edit_latents(pipe, inversion, ITEM)
    shifted = method.reconstruction().edit_latents(pipe, shift_codes(inversion, 3), ITEM)
    assert torch.equal(shifted, torch.roll(base, 3, dims=-1))
    partial = shift_codes(inversion, 3)
    partial.tensors["zs"][5] = inversion.tensors["zs"][5]
    assert not torch.equal(method.reconstruction().edit_latents(pipe, partial, ITEM), torch.roll(base, 3, dims=-1))


def test_colour_hook_moves_only_the_masked_pixels_towards_the_colour():
    pipe = gaussian_pipe()
    method = EFDDPM(num_steps=50)
    x0 = points(64, seed=8).view(1, 2, 8, 8)
    inversion = method.invert(pipe, x0, "", torch.Generator().manual_seed(9))
    regenerate = method.reconstruction()
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:5, 2:6] = 1
    colour = torch.full_like(x0, 14.0)
    base = regenerate.edit_latents(pipe, inversion, ITEM)
    outside_window = regenerate.edit_latents(pipe, inversion, ITEM, colour_hook((2000, 3000), 1.0, mask, colour, pipe.scheduler))
    assert torch.equal(outside_window, base)
    distances = []
    for s in (0.5, 2.0):
        edited = regenerate.edit_latents(pipe, inversion, ITEM, colour_hook((0, 999), s, mask, colour, pipe.scheduler))
        assert torch.equal(edited * (1 - mask), base * (1 - mask))  # pixelwise model: B's outside untouched
        distances.append(float(((edited - colour).abs() * mask).sum()))
    assert distances[1] < distances[0] < float(((base - colour).abs() * mask).sum())


# ----------------------------------------------------------------------------------------------
# configs, report hook, smoke runs


@pytest.mark.parametrize("name", ANALYSES)
def test_analysis_experiment_configs(name, tmp_path):
    text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
    assert text.startswith("# @package _global_")
    assert yaml.safe_load(text)["run_name"] == name
    cfg = compose_config([f"experiment={name}"], tmp_path)
    assert cfg.analysis._target_.startswith("bench.analyses.")
    assert cfg.hydra.mode is None or cfg.hydra.mode.name == "RUN"  # one job, not a sweep
    if name != "ef_gaussian_2d":
        assert cfg.model.name == "toy-sd" and cfg.dataset._target_.endswith("ToyShapes")


def test_report_renders_analysis_sections_and_still_refuses_an_empty_dir(tmp_path):
    from bench.report import build_report

    with pytest.raises(FileNotFoundError):
        build_report(tmp_path)
    (tmp_path / "analyses" / "demo").mkdir(parents=True)
    (tmp_path / "analyses" / "demo" / "section.html").write_text("<h2>Demo analysis</h2><p>x = 1</p>")
    assert "<h2>Demo analysis</h2><p>x = 1</p>" in build_report(tmp_path).read_text()


FAST = {  # debug=limit and a few steps: seconds each on the tiny random pipeline
    "ef_noise_statistics": [],
    "ef_image_shift": ["analysis.shifts=[1,2]"],
    "ef_color_manipulation": ["analysis.strengths=[1.0]", "analysis.sdedit_strengths=[0.1]",
                              "analysis.timestep_range=[0,999]"],
}


def check_outputs(results, name: str, cfg, table) -> None:
    """Every table as csv + md, a figure, the section, the report; the returned table's means finite."""
    directory = results / "analyses" / name
    tables = sorted(p.stem for p in directory.glob("*.csv"))
    assert tables and all((directory / f"{t}.md").is_file() for t in tables)
    assert list(directory.glob("*.png")) and (directory / "section.md").is_file()
    report = (results / "report" / "index.html").read_text()
    assert cfg.analysis.title in report and "data:image/png;base64," in report
    means = table.select_dtypes("number").filter(regex="mean|psnr_in|psnr_out|accuracy|lpips_out")
    assert len(means.columns) >= 2
    finite = means.apply(lambda column: column.map(math.isfinite))
    assert (finite.sum() >= len(means) - 1).all()  # (no z_0: the smallest t has no correlation)


@pytest.mark.parametrize("name", sorted(FAST))
def test_analysis_runs_with_debug_limit_on_the_tiny_model(name, tmp_path):
    from bench.analyses import run_analysis

    results = tmp_path / "results"
    cfg = compose_config([f"experiment={name}", "debug=limit", "limit=1", "method.num_steps=4",
                          "method.skip=1", *FAST[name]], results)
    assert cfg.model.name == "tiny_random"
    out = run_analysis(cfg)
    check_outputs(results, name, cfg, out["table"])
    assert "RANDOM WEIGHTS" not in (results / "analyses" / name / "section.md").read_text()
    again = run_analysis(cfg)  # the cached inversions are reused: same numbers
    assert again["table"].equals(out["table"])


def test_sd14_random_config_builds_in_code_with_sd14_geometry():
    """``model=sd14_random``: built by bench.perf.sd_shaped (nothing to fetch), labelled random; the narrow
    variant the slow test runs keeps SD v1.4's geometry (checked on the meta device: no memory)."""
    from bench.commands.weights import needs_for
    from bench.perf.sd_shaped import NARROW, SD14, build_modules

    cfg = compose_config(["model=sd14_random"], REPO_ROOT / "results")
    assert cfg.model.build == "bench.perf.sd_shaped:build_sd14_random" and cfg.model.random_weights is True
    assert needs_for(["sd14_random"], None) == []
    full, narrow = build_modules("meta", shapes=SD14), build_modules("meta", shapes=NARROW)
    for key in ("sample_size", "down_block_types", "up_block_types", "layers_per_block", "in_channels"):
        assert narrow["unet"].config[key] == full["unet"].config[key]
    assert len(narrow["vae"].config.block_out_channels) == len(full["vae"].config.block_out_channels) == 4  # ×8
    assert narrow["text_encoder"].config.max_position_embeddings == 77


def test_colour_manipulation_without_ground_truth_says_what_it_needs_before_building_the_model(tmp_path):
    """A dataset of real photos has no re-rendered target: a clear error naming toy_shapes, before any model
    (here the 4.6 GB sd14_random) is built."""
    from PIL import Image

    from bench.analyses.color_manipulation import ColorManipulation
    from bench.analyses.context import AnalysisContext

    folder = tmp_path / "photos"
    folder.mkdir()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(folder / "car.png")
    (folder / "prompts.yaml").write_text("- image: car.png\n  source_prompt: a red car\n"
                                         "  edits: [{target_prompt: a blue car, category: colour}]\n")
    model_dir = tmp_path / "sd14_random"
    cfg = compose_config(["experiment=ef_color_manipulation", "model=sd14_random", f"model.path={model_dir}",
                          "dataset=folder", f"dataset.root={folder}"], tmp_path / "results")
    with pytest.raises(ValueError, match=r"dataset 'folder' has no usable items \(it needs colour edits .*dataset=toy_shapes"):
        ColorManipulation().run(AnalysisContext(cfg, "ef_color_manipulation"))
    assert not model_dir.exists()


@pytest.fixture(scope="module")
def narrow_sd_dir(tmp_path_factory):
    from bench.perf.sd_shaped import build_sd14_narrow_random

    return build_sd14_narrow_random(tmp_path_factory.mktemp("models") / "sd14_narrow")


SD_SHAPED = {  # 3 steps (2 regenerated), the 64² latent's largest default shift, 2 SDEdit steps of 50
    "ef_gaussian_2d": ["analysis.num_points=100"],
    "ef_noise_statistics": [],
    "ef_image_shift": ["analysis.shifts=[8]"],
    "ef_color_manipulation": ["analysis.strengths=[1.0]", "analysis.sdedit_strengths=[0.04]",
                              "analysis.timestep_range=[0,999]"],
}


@pytest.mark.slow  # ~1 min on 2 cores
def test_every_analysis_runs_on_the_sd14_shaped_pipeline(narrow_sd_dir, tmp_path):
    """The four experiments with ``model=sd14_random`` at SD v1.4's geometry (64² latents, VAE ×8, 512² images,
    77 tokens) but narrow widths (``build_sd14_narrow_random``; the full widths take minutes per UNet pass on
    CPU, docs/experiments.md). One results dir: the later experiments reuse the first one's inversions."""
    from bench.analyses import run_analysis

    results = tmp_path / "results"
    model = ["model=sd14_random", "model.build=bench.perf.sd_shaped:build_sd14_narrow_random",
             f"model.path={narrow_sd_dir}", "model.name=sd14_narrow_random"]
    tables = {}
    for name, overrides in SD_SHAPED.items():
        cfg = compose_config([f"experiment={name}", "debug=limit", "limit=1", *model, "method.num_steps=3",
                              "method.skip=1", *overrides], results)
        tables[name] = run_analysis(cfg)["table"]
        check_outputs(results, name, cfg, tables[name])
        section = (results / "analyses" / name / "section.md").read_text()
        assert ("RANDOM WEIGHTS" in section) == (name != "ef_gaussian_2d")  # the 2-D demo loads no model
    assert tables["ef_image_shift"]["pixels"].tolist() == [0, 64, 0, 64]  # k·8: SD's VAE factor
    assert len(tables["ef_color_manipulation"]) == 3  # M pasted, EF at s = 1, SDEdit at 0.04
    noise = (results / "analyses" / "ef_noise_statistics" / "section.md").read_text()
    assert "16384 values per map" in noise  # 4 × 64 × 64


def test_gaussian_2d_from_the_command_line(tmp_path):
    run = subprocess.run([sys.executable, "-m", "bench.cli", "experiment=ef_gaussian_2d", "analysis.num_points=50",
                          f"paths.results_dir={tmp_path}"], check=False, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "EF inversion" in run.stdout and (tmp_path / "analyses" / "ef_gaussian_2d" / "arrows.png").is_file()
    table = (tmp_path / "analyses" / "ef_gaussian_2d" / "z_geometry.csv").read_text()
    assert table.count("True") == 2  # both inversions land bitwise on their own path
