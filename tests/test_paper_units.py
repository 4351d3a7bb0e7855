"""Every row of every results/paper/*.csv is compared like with like: it names one of our metric ids, its unit
(of value / paper_scale) is that metric's declared unit, the paper's column header agrees with paper_scale, and
the value lies in the range that unit takes for edited images and their prompts."""

from __future__ import annotations

import importlib
import re

import pandas as pd
import pytest
import yaml

from bench.config import config_file, group_options
from bench.paper_tables import PAPER_DIR, load_paper, paper_comparison

# Plausible values of one edit under each unit. CLIP cosines of an image and a caption describing it lie in
# ~0.15–0.45 for ViT-B/32 and ViT-L/14 (Hessel et al. report CLIP-S ≈ 0.75–0.8 = 2.5·cos on captioning data).
RANGES = {
    "100·cos": (10.0, 50.0),
    "max(100·cos, 0)": (10.0, 50.0),
    "2.5·max(cos, 0)": (0.25, 1.25),
    "LPIPS distance": (0.0, 1.0),
    "MSE of DINO key self-similarity": (0.0, 0.5),
    "MSE of [0, 1] pixels": (0.0, 1.0),
    "SSIM": (0.0, 1.0),
    "dB": (5.0, 60.0),
}
PAPERS = sorted(PAPER_DIR.glob("*.csv"))
ROWS = [(p.stem, i, row) for p in PAPERS for i, row in load_paper(p).iterrows()]


def registered_metrics() -> dict[str, dict]:
    """Every metric id of every metric set (conf/metrics/*.yaml ``registry:``) → its config entry."""
    registry: dict[str, dict] = {}
    for metric_set in group_options("metrics"):
        cfg = yaml.safe_load(config_file("metrics", metric_set).read_text(encoding="utf-8")) or {}
        for metric_id, entry in (cfg.get("registry") or {}).items():
            registry.setdefault(metric_id, entry)
    return registry


BUILTIN = registered_metrics()


def metric_class(metric_id: str):
    module, _, name = BUILTIN[metric_id]["_target_"].rpartition(".")
    return getattr(importlib.import_module(module), name)


def header_scale(paper_metric: str) -> float:
    """The scale a paper's column header states: 'x10^3' → 1000, '(%)' → 100, else 1."""
    if match := re.search(r"x10\^(\d)", paper_metric):
        return 10.0 ** int(match.group(1))
    return 100.0 if "%" in paper_metric else 1.0


def check_row(row) -> None:
    metric = metric_class(row["metric_id"])
    assert row["unit"] == metric.unit, f"paper unit {row['unit']!r} but {row['metric_id']} is in {metric.unit!r}"
    assert float(row["paper_scale"]) == header_scale(row["paper_metric"]), "paper_scale disagrees with the header"
    low, high = RANGES[metric.unit]
    ours = float(row["value"]) / float(row["paper_scale"])
    assert low <= ours <= high, f"{ours} is not a plausible {metric.unit!r} value ({low}–{high})"


@pytest.mark.parametrize("paper,index,row", ROWS, ids=[f"{p}-{i}" for p, i, _ in ROWS])
def test_every_paper_row_is_on_its_metrics_scale(paper, index, row):
    assert row["metric_id"] in BUILTIN
    check_row(row)


def test_every_unit_in_use_has_a_range():
    assert {metric_class(m).unit for m in BUILTIN} - {""} <= set(RANGES) | {"MSE of DINO key self-similarity"}


def test_the_old_stylediffusion_clip_row_fails():
    """The row as it was (the paper's % against clip_score = 100·cos after ÷100) is caught."""
    old = pd.Series({"metric_id": "clip_score", "unit": "100·cos", "paper_metric": "CLIP score (%)", "value": 81.9,
                     "paper_scale": 100})
    with pytest.raises(AssertionError, match="not a plausible"):
        check_row(old)
    with pytest.raises(AssertionError, match="paper unit"):
        check_row({**old, "unit": "2.5·max(cos, 0)"})


def test_stylediffusion_clipscore_sits_beside_clipscore_hessel_in_percent(tmp_path):
    paper = load_paper(PAPER_DIR / "stylediffusion.csv")
    clip = paper[paper["paper_metric"].str.startswith("Clipscore")]
    assert set(clip["metric_id"]) == {"clipscore_hessel"} and len(clip) == 4
    comparison = paper_comparison(tmp_path, paper, edits=pd.DataFrame())
    ddim = comparison[comparison["paper method"] == "DDIM"].iloc[0]
    assert ddim["clipscore_hessel ×100 paper ↑"] == pytest.approx(81.9)  # CLIP-S 0.819 shown ×100, as the paper
    assert metric_class("clipscore_hessel").display_scale == 100.0  # ours is shown on the same ×100 scale
