"""bench/stats.py and its table integration: bootstrap intervals against normal theory, paired tests on
constructed pairs (identical → not significant, known shift → detected), seeded reruns, rank agreement
against hand-computed values, significant-best bolding and the ``bench tables --compare`` CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_tables import add_edit, add_metric

from bench import stats
from bench.table_files import write_tables
from bench.tables import summary_table, to_markdown

Z975 = 1.959963984540054  # Φ⁻¹(0.975)
PHI_Z975 = math.exp(-Z975**2 / 2) / math.sqrt(2 * math.pi)  # standard normal density at Φ⁻¹(0.975)


def test_bootstrap_interval_of_normal_samples_matches_theory():
    n, sigma, n_boot = 400, 2.0, stats.N_BOOT
    x = np.random.default_rng(123).normal(5.0, sigma, n)
    low, high = stats.bootstrap_ci(x)
    # The resampled means have sd s0/√n (s0: std with ddof=0) and, for normal data, are ≈ normal, so the
    # exact percentile interval is mean ± z·s0/√n. Its Monte-Carlo error: the sd of an empirical
    # 2.5 % quantile of n_boot draws is √(p(1−p)/n_boot)/φ(z) in units of s0/√n.
    scale = x.std() / math.sqrt(n)
    mc = math.sqrt(0.025 * 0.975 / n_boot) / PHI_Z975 * scale
    assert (low + high) / 2 == pytest.approx(x.mean(), abs=4 * mc)
    assert (high - low) / 2 == pytest.approx(Z975 * scale, abs=4 * mc)  # a 90 % interval would be 8 mc short
    # against σ itself: add the sampling sd of s0 (σ/√(2n)) to the tolerance
    sampling = Z975 * sigma / math.sqrt(n) / math.sqrt(2 * n)
    assert (high - low) / 2 == pytest.approx(Z975 * sigma / math.sqrt(n), abs=4 * math.hypot(mc, sampling))
    assert stats.standard_error(x) == pytest.approx(x.std(ddof=1) / math.sqrt(n))


def test_seeded_statistics_are_identical_across_reruns():
    x = np.random.default_rng(7).normal(size=40)
    y = x + np.random.default_rng(8).normal(0.1, 1.0, 40)
    assert stats.bootstrap_ci(x) == stats.bootstrap_ci(x)
    assert stats.paired_test(x, y) == stats.paired_test(x, y)  # n = 40: the Monte-Carlo sign flips, seeded
    assert stats.bootstrap_ci(x, seed=1) != stats.bootstrap_ci(x, seed=2)  # the seed is what fixes them


def test_identical_methods_show_no_difference():
    a = np.random.default_rng(0).normal(size=50)
    r = stats.paired_test(a, a.copy())
    assert (r.diff, r.ci_low, r.ci_high, r.p_value) == (0.0, 0.0, 0.0, 1.0) and not r.significant()


@pytest.mark.parametrize("n", [12, 40])  # exact enumeration (2^12 patterns) and Monte-Carlo sign flips
def test_known_shift_is_detected_and_estimated(n):
    rng = np.random.default_rng(n)
    shift, noise = 0.5, 0.2
    b = rng.normal(size=n)
    a = b + shift + rng.normal(0.0, noise, n)  # the per-item difference is shift + N(0, noise²)
    r = stats.paired_test(a, b)
    assert r.exact == (n <= stats.EXACT_FLIPS_MAX_N)
    assert r.significant() and r.ci_low > 0
    assert r.diff == pytest.approx(shift, abs=4 * noise / math.sqrt(n))
    assert r.se == pytest.approx(noise / math.sqrt(n), rel=4 / math.sqrt(2 * (n - 1)))
    # with n pairs all of one sign, no sign pattern beats the observed one except its mirror: p = 2/2^n
    assert stats.sign_flip_p_value(np.full(10, 0.3)) == (2 / 2**10, True)


def test_sign_flip_p_value_is_uniform_under_the_null():
    # 400 null data sets of 10 symmetric differences: P(p < 0.05) must be ≤ 0.05 (exact test; discrete p)
    rng = np.random.default_rng(3)
    rejections = sum(stats.sign_flip_p_value(rng.normal(size=10))[0] < 0.05 for _ in range(400))
    assert rejections / 400 <= 0.05 + 4 * math.sqrt(0.05 * 0.95 / 400)
    assert rejections > 0  # a test that never rejects would pass the line above too


def test_rank_agreement_against_hand_computed_values():
    # StyleDiffusion table Structure-dist (DDIM, SDEdit, Null-text, StyleDiffusion) vs the toy world's
    # means from docs/toyworld.md: one discordant pair of six, Σd² = 2
    paper, toy = [0.092, 0.046, 0.027, 0.026], [113.2, 139.0, 102.3, 95.3]
    r = stats.rank_agreement(paper, toy)
    assert r.n == 4 and r.tau == pytest.approx((5 - 1) / 6) and r.rho == pytest.approx(1 - 6 * 2 / (4 * 15))
    assert r.p_tau == pytest.approx(8 / 24) and r.p_rho == pytest.approx(8 / 24)  # |τ| ≥ 2/3: 4 + 4 of 24 orders
    # ties: x has one tied pair → τ_b = 5/√(5·6); ρ on average ranks (1, 2.5, 2.5, 4) vs (1, 2, 3, 4)
    tied = stats.rank_agreement([1, 2, 2, 3], [1, 2, 3, 4])
    assert tied.tau == pytest.approx(5 / math.sqrt(30)) and tied.rho == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert stats.rank_agreement([1, 2, 3, 4], [4, 3, 2, 1]).tau == pytest.approx(-1)
    # four points: even a perfect ordering has exact two-sided p = 2/4! (not significant at 0.05)
    assert stats.rank_agreement([1, 2, 3, 4], [10, 20, 30, 40]).p_tau == pytest.approx(2 / 24)
    assert math.isnan(stats.rank_agreement([1, np.nan], [2, 3]).tau)  # one pair left: no ordering to compare


def _paired_results(root: Path, n: int, lpips_shift: float) -> Path:
    """ef_ddpm and ddim_p2p on the same n items; ddim_p2p's LPIPS = ef_ddpm's + lpips_shift, CLIP equal."""
    rng = np.random.default_rng(11)
    for i, base in enumerate(rng.uniform(0.2, 0.6, n)):
        for method, lp in (("ef_ddpm", base), ("ddim_p2p", base + lpips_shift)):
            key = f"{method}{i}"
            add_edit(root, key, method, f"img{i}/0", stochastic=method == "ef_ddpm")
            add_metric(root, key, "lpips_alex", lp, higher=False)
            add_metric(root, key, "clip_score", 0.3 + 0.01 * i, scale=100)
    return root


def test_bold_only_when_significantly_better_than_the_runner_up(tmp_path):
    shifted = summary_table(_paired_results(tmp_path / "a", 20, 0.05))
    md = to_markdown(shifted)
    ef_line = next(line for line in md.splitlines() if line.startswith("| ef_ddpm"))
    assert "**0." in ef_line.split("|")[-2]  # ef_ddpm's LPIPS is lower on every item → bold
    assert "**" not in md.split("\n\n")[0].replace(ef_line, "")  # CLIP/psnr are tied: nothing else bold
    assert "sign-flip" in md and "p < 0.05" in md  # the footnote names the test and level
    tiny = summary_table(_paired_results(tmp_path / "b", 20, 0.0))  # identical → no winner
    assert not tiny.filter(like=" best").any().any()
    ef = shifted[shifted["method"] == "ef_ddpm"].iloc[0]
    assert ef["lpips_alex ci_low"] < ef["lpips_alex ↓"] < ef["lpips_alex ci_high"]
    assert ef["lpips_alex se"] > 0 and "lpips_alex se_seed" not in shifted  # one seed: no seed component


def test_tables_are_identical_across_reruns(tmp_path):
    root = _paired_results(tmp_path / "r", 20, 0.01)
    first = write_tables(root)["csv"].read_bytes()
    assert write_tables(root)["csv"].read_bytes() == first
    columns = set(pd.read_csv(root / "tables" / "summary.csv"))
    assert {"lpips_alex se", "lpips_alex ci_low", "lpips_alex ci_high", "lpips_alex best"} <= columns


def _compare_rows(output: str) -> dict[str, list[str]]:
    """metric → cells of the comparison printed after the summary table."""
    comparison = output.split("ef_ddpm vs ddim_p2p")[1]
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in comparison.splitlines() if line.startswith("| ") and ("↑" in line or "↓" in line)}


def test_compare_cli_prints_paired_differences(tmp_path, capsys):
    from bench.cli import run_command

    root = _paired_results(tmp_path / "r", 20, 0.05)
    assert run_command(["tables", str(root), "--compare", "ef_ddpm", "ddim_p2p"]) == 0
    rows = _compare_rows(capsys.readouterr().out)
    assert set(rows) == {"lpips_alex ↓", "clip_score ×100 ↑", "psnr_vs_source ↑"}  # every metric
    n, _, _, diff, _, low, high, p, better = rows["lpips_alex ↓"]
    assert n == "20" and float(diff) == pytest.approx(-0.05) and float(p) < 0.05 and better == "ef_ddpm"
    assert float(low) == pytest.approx(-0.05) and float(high) == pytest.approx(-0.05)  # constant difference
    n, _, _, diff, _, _, _, p, better = rows["clip_score ×100 ↑"]
    assert float(diff) == 0 and float(p) == 1 and better == "--"  # identical → no significant difference
    assert run_command(["tables", str(root), "--compare", "ef_ddpm", "nope"]) == 2
    assert "no records of method 'nope'" in capsys.readouterr().out
    for i, strength in enumerate((0.1, 0.2)):  # a sweep whose config is unknown: no default point to compare
        add_edit(root, f"c{i}", "custom", "img0/0", hparams={"strength": strength})
    assert run_command(["tables", str(root), "--compare", "custom", "ef_ddpm"]) == 2
    assert "'custom' has several points" in capsys.readouterr().out


def test_paper_table_carries_rank_agreement(tmp_path):
    root = tmp_path / "r"
    ours = {"m1": 0.1, "m2": 0.2, "m3": 0.3, "m4": 0.5}
    for method, value in ours.items():
        for i in range(3):
            add_edit(root, f"{method}{i}", method, f"img{i}/0", dataset="toy_shapes")
            add_metric(root, f"{method}{i}", "lpips_alex", value + 0.01 * i, higher=False)
    paper_dir = tmp_path / "paper"
    paper_dir.mkdir()
    published = {"m1": 0.2, "m2": 0.1, "m3": 0.3, "m4": 0.4}  # m1/m2 swapped: τ = 4/6, ρ = 0.8
    pd.DataFrame([{"paper_table": "x", "paper_method": m.upper(), "method": m, "paper_metric": "LPIPS",
                   "metric_id": "lpips_alex", "value": v, "paper_scale": 1, "unit": "LPIPS distance", "higher_is_better": False,
                   "dataset": "*", "model": "sd14", "source": "a paper", "note": ""}
                  for m, v in published.items()]).to_csv(paper_dir / "x.csv", index=False)
    write_tables(root, papers=["x"], paper_dir=paper_dir)
    ranks = pd.read_csv(root / "tables" / "paper_x_ranks.csv")
    assert list(ranks["metric"]) == ["lpips_alex ↓"] and ranks["methods"].iloc[0] == 4
    assert ranks["Kendall τ"].iloc[0] == pytest.approx(4 / 6) and ranks["Spearman ρ"].iloc[0] == pytest.approx(0.8)
    md = (root / "tables" / "paper_x.md").read_text()
    assert "proxy: the toy world" in md and "p = 0.0833" in md  # labelled, and how little 4 points say
    from bench.paper_tables import load_paper, paper_comparison
    from bench.report_stats import rank_agreement_html
    from bench.tables import load_edits

    edits = load_edits(root)
    html = rank_agreement_html(paper_comparison(root, load_paper(paper_dir / "x.csv"), edits),
                               load_paper(paper_dir / "x.csv"), edits)
    assert "Kendall τ" in html and "0.667" in html and "proxy: the toy world" in html
