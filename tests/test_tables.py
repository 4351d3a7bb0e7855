"""Aggregation on hand-written records (fast, no model): means, mean ± std over seeds, NaN counting,
bold best per column in markdown/LaTeX, paper-vs-ours differences and the published-number files."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO_ROOT, add_edit, add_metric

from bench.paper_tables import load_paper, paper_comparison, paper_tables
from bench.table_files import write_tables
from bench.tables import default_points, summary_table, to_latex, to_markdown


@pytest.fixture
def results(tmp_path) -> Path:
    """Two methods: a deterministic one (2 items) and a stochastic one (2 items × 3 seeds), one NaN score,
    one failed item."""
    root = tmp_path / "results"
    for i, (lp, cs) in enumerate([(0.2, 0.30), (0.4, 0.32)]):
        add_edit(root, f"d{i}", "ddim_p2p", f"img{i}/0")
        add_metric(root, f"d{i}", "lpips_alex", lp, higher=False)
        add_metric(root, f"d{i}", "clip_score", cs, scale=100)
    per_seed = {0: (0.10, 0.20), 1: (0.30, 0.40), 2: (0.50, 0.60)}  # item values → seed means .15, .35, .55
    for seed, values in per_seed.items():
        for i, lp in enumerate(values):
            key = f"e{seed}{i}"
            add_edit(root, key, "ef_ddpm", f"img{i}/0", seed=seed, stochastic=True, nfe=20)
            add_metric(root, key, "lpips_alex", lp, higher=False)
            add_metric(root, key, "clip_score", None if (seed, i) == (2, 1) else 0.25, scale=100)
    add_edit(root, "fail", "ddim_p2p", "img9/0", status="failed")
    return root


def row(table: pd.DataFrame, method: str) -> pd.Series:
    return table[table["method"] == method].iloc[0]


def test_summary_means_counts_std_over_seeds_and_nan(results):
    table = summary_table(results)
    ddim, ef = row(table, "ddim_p2p"), row(table, "ef_ddpm")
    assert (ddim["n"], ddim["failed"], ddim["seeds"]) == (2, 1, 1)
    assert (ef["n"], ef["failed"], ef["seeds"]) == (6, 0, 3)
    assert ddim["lpips_alex ↓"] == pytest.approx(0.3)
    assert ddim["clip_score ×100 ↑"] == pytest.approx(31.0)
    assert ef["lpips_alex ↓"] == pytest.approx(0.35)
    assert ef["lpips_alex std"] == pytest.approx(np.std([0.15, 0.35, 0.55], ddof=1))
    assert math.isnan(ddim["lpips_alex std"])  # deterministic, one seed: no spread to report
    assert ef["clip_score NaN"] == 1 and ddim["clip_score NaN"] == 0
    assert ef["clip_score ×100 ↑"] == pytest.approx(25.0)  # the NaN is skipped, not counted as 0
    assert ef["NFE/item"] == 20


def test_markdown_and_latex_mark_the_best_per_direction(results):
    table = summary_table(results)
    md = to_markdown(table)
    ddim_line = next(line for line in md.splitlines() if line.startswith("| ddim_p2p"))
    ef_line = next(line for line in md.splitlines() if line.startswith("| ef_ddpm"))
    # two shared items: the exact paired test cannot reach p < 0.05 (smallest p = 2/2² = 0.5) → nothing bold
    assert "**" not in ddim_line and "**" not in ef_line  # (significant bolding: tests/test_stats.py)
    assert "0.3 ± 0.1 |" in ddim_line  # mean ± se over items: std(0.2, 0.4) / √2
    assert "0.35 ± 0.05 (seeds ± 0.12)" in ef_line  # item means .3/.4; seed means .15/.35/.55 → 0.2/√3
    assert "(1 NaN)" in ef_line
    tex = to_latex(table)
    assert r"$\downarrow$" in tex and r"$\uparrow$" in tex and r"$\pm$" in tex and "sign-flip" in tex
    assert r"ddim\_p2p" in tex and r"\toprule" in tex and r"\bottomrule" in tex


def test_write_tables_files_and_failures(results):
    paths = write_tables(results)
    assert {p.name for p in paths.values()} >= {"summary.md", "summary.csv", "summary.tex"}
    csv = pd.read_csv(paths["csv"])
    assert set(csv["method"]) == {"ddim_p2p", "ef_ddpm"}
    failures = pd.read_csv(results / "tables" / "failures.csv")
    assert list(failures["item_id"]) == ["img9/0"] and list(failures["error"]) == ["boom"]


def test_paper_vs_ours_difference_in_our_units(tmp_path, results):
    paper_csv = tmp_path / "paper.csv"
    pd.DataFrame([
        {"paper_table": "t", "paper_method": "DDIM + P2P", "method": "ddim_p2p", "paper_metric": "LPIPS x10^3",
         "metric_id": "lpips_alex", "value": 250.0, "paper_scale": 1000, "unit": "LPIPS distance", "higher_is_better": False,
         "dataset": "toyset", "model": "sd14", "source": "a paper", "note": ""},
        {"paper_table": "t", "paper_method": "DDIM + P2P", "method": "ddim_p2p", "paper_metric": "CLIP",
         "metric_id": "clip_score", "value": 0.35, "paper_scale": 1, "unit": "100·cos", "higher_is_better": True,
         "dataset": "toyset", "model": "sd14", "source": "a paper", "note": ""},
        {"paper_table": "t", "paper_method": "Other", "method": "", "paper_metric": "CLIP",
         "metric_id": "clip_score", "value": 0.2, "paper_scale": 1, "unit": "100·cos", "higher_is_better": True,
         "dataset": "toyset", "model": "sd14", "source": "a paper", "note": "not implemented"},
    ]).to_csv(paper_csv, index=False)
    comparison = paper_comparison(results, load_paper(paper_csv))
    ddim = comparison[comparison["paper method"] == "DDIM + P2P"].iloc[0]
    assert ddim["lpips_alex paper ↓"] == pytest.approx(0.25)  # 250 ×10⁻³ in our (×1) units
    assert ddim["lpips_alex ours ↓"] == pytest.approx(0.3)
    assert ddim["lpips_alex Δ"] == pytest.approx(0.05)
    assert ddim["clip_score ×100 paper ↑"] == pytest.approx(35.0)  # in our ×100 display units
    assert ddim["clip_score ×100 Δ"] == pytest.approx(31.0 - 35.0)
    other = comparison[comparison["paper method"] == "Other"].iloc[0]
    assert math.isnan(other["clip_score ×100 ours ↑"])  # a row we did not run stays visible, empty


def test_paper_tables_applied_by_dataset_or_by_name(tmp_path, results):
    paper_dir = tmp_path / "paper"
    paper_dir.mkdir()
    base = {"paper_table": "x", "paper_method": "DDIM", "method": "ddim_p2p", "paper_metric": "LPIPS",
            "metric_id": "lpips_alex", "value": 0.2, "paper_scale": 1, "unit": "LPIPS distance", "higher_is_better": False,
            "model": "sd14", "source": "s", "note": ""}
    pd.DataFrame([{**base, "dataset": "toyset"}]).to_csv(paper_dir / "same_data.csv", index=False)
    pd.DataFrame([{**base, "dataset": "*"}]).to_csv(paper_dir / "unknown_data.csv", index=False)
    pd.DataFrame([{**base, "dataset": "other"}]).to_csv(paper_dir / "other_data.csv", index=False)
    auto = write_tables(results, paper_dir=paper_dir)
    assert "paper_same_data" in auto and "paper_unknown_data" not in auto and "paper_other_data" not in auto
    named = write_tables(results, papers=["unknown_data"], paper_dir=paper_dir)
    assert "paper_unknown_data" in named
    assert "0.3" in (results / "tables" / "paper_unknown_data.md").read_text()
    with pytest.raises(ValueError, match="no_such_table"):
        write_tables(results, papers=["no_such_table"], paper_dir=paper_dir)


def test_default_point_is_the_method_configs_values(tmp_path):
    root = tmp_path / "r"
    for key, strength in (("a", 0.5), ("b", 0.8), ("c", 1.0)):
        add_edit(root, key, "sdedit", "img0/0", hparams={"strength": strength, "num_steps": 4})
    from bench.tables import load_edits

    assert default_points(load_edits(root)) == {"sdedit": "strength=0.8"}  # conf/method/sdedit.yaml: 0.8


def test_published_numbers_files_are_complete_and_mapped():
    import yaml

    registered = {metric_id for path in (REPO_ROOT / "conf" / "metrics").glob("*.yaml")
                  for metric_id in (yaml.safe_load(path.read_text()) or {}).get("registry", {})}
    assert registered
    papers = paper_tables()
    assert {"stylediffusion", "pie_bench"} <= set(papers)
    for name, paper in papers.items():
        assert paper["source"].str.len().min() > 10, name
        assert set(paper["metric_id"]) <= registered, name  # every paper column maps to one of our metric ids
        assert not paper.duplicated(["paper_method", "metric_id"]).any(), name
    sd = papers["stylediffusion"].set_index(["paper_method", "metric_id"])["value"]
    assert sd[("DDIM", "structure_dist")] == 0.092 and sd[("StyleDiffusion", "ns_lpips_sd")] == 0.1165
    assert sd[("SDEdit", "clipscore_hessel")] == 78.0 and sd[("Null-text", "ns_lpips_sd")] == 0.1480
    pie = papers["pie_bench"].set_index(["paper_method", "metric_id"])
    assert pie.loc[("Null-text + P2P", "structure_dist_pie"), "value"] == 13.44
    assert pie.loc[("Null-text + P2P", "structure_dist_pie"), "paper_scale"] == 1000
    assert pie.loc[("DDIM + P2P", "clip_score_edit_pie"), "value"] == 22.44
    mapped = set(papers["stylediffusion"]["method"]) | set(papers["pie_bench"]["method"]) - {""}
    assert mapped - {""} == {"ddim_p2p", "sdedit", "null_text_p2p", "stylediffusion_p2plus", "ddim_p2p_pie",
                             "null_text_p2p_pie", "stylediffusion_p2plus_pie", "pnp", "pix2pix_zero_pie",
                             "negative_prompt_p2p", "direct_inversion_p2p"}
    conf = REPO_ROOT / "conf" / "method"
    assert all((conf / f"{m}.yaml").is_file() for m in mapped - {""})  # labels are method configs
    assert (REPO_ROOT / "results" / "paper").is_dir()
