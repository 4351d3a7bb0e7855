"""Published numbers beside ours: ``results/paper/*.csv`` (one row per paper method × paper column, with
the metric id it is compared with and its unit), loaded, checked and compared in our display units."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench.formatting import format_number
from bench.tables import default_points, load_edits, load_long

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
PAPER_DIR = REPO_ROOT / "results" / "paper"
PAPER_COLUMNS = ["paper_table", "paper_method", "method", "paper_metric", "metric_id", "value", "paper_scale",
                 "unit", "higher_is_better", "dataset", "model", "source", "note"]  # unit: of value/paper_scale = the metric's


def load_paper(path: str | Path) -> pd.DataFrame:
    """A ``results/paper/*.csv`` file, checked: one row per (paper method, paper column)."""
    frame = pd.read_csv(path, dtype={"method": str, "metric_id": str}, keep_default_na=False,
                        na_values={"value": [""]})
    missing = [c for c in PAPER_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {PAPER_COLUMNS}")
    if frame["source"].str.strip().eq("").any():
        raise ValueError(f"{path}: every row needs a source")
    unitless = frame[frame["metric_id"].str.strip().ne("") & frame["unit"].astype(str).str.strip().eq("")]
    if not unitless.empty:
        raise ValueError(f"{path}: rows {list(unitless.index + 2)} name a metric_id but no unit (the unit of "
                         "value / paper_scale, which must be the metric's declared unit)")
    frame["value"] = pd.to_numeric(frame["value"], errors="raise")
    frame["paper_scale"] = pd.to_numeric(frame["paper_scale"], errors="raise")
    frame["higher_is_better"] = frame["higher_is_better"].astype(str).str.lower().isin(["true", "1", "yes"])
    return frame


def paper_tables(paper_dir: str | Path | None = None) -> dict[str, pd.DataFrame]:
    root = Path(paper_dir or PAPER_DIR)
    return {p.stem: load_paper(p) for p in sorted(root.glob("*.csv"))}


def paper_comparison(results_dir: str | Path, paper: pd.DataFrame, edits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Paper vs ours for every mapped (paper method, metric): one row per paper method with
    ``<metric> paper``, ``<metric> ours``, ``<metric> Δ`` (ours − paper) columns in our display units.

    "ours" is the mean over the method's default point (the config's values; the only point when
    there is one). Paper rows whose method or metric we have not run show "--" for ours."""
    edits = load_edits(results_dir) if edits is None else edits
    long = load_long(results_dir, edits) if not edits.empty else pd.DataFrame()
    defaults = default_points(edits) if not edits.empty else {}
    datasets = set(edits["dataset"]) if not edits.empty else set()
    rows: dict[str, dict[str, Any]] = {}
    for _, p in paper.iterrows():
        row = rows.setdefault(p["paper_method"], {"paper method": p["paper_method"], "ours as": p["method"] or "--"})
        ours = math.nan
        scale = float(p["paper_scale"])
        if not long.empty and p["method"] and p["metric_id"]:
            sel = long[(long["metric_id"] == p["metric_id"]) & (long["method"] == p["method"])]
            if p["dataset"] and p["dataset"] != "*" and datasets:
                sel = sel[sel["dataset"] == p["dataset"]]
            point = defaults.get(p["method"])
            sel = sel[sel["point"] == point] if point is not None else sel.iloc[0:0]
            if sel["model"].nunique() > 1:  # never one number from several models
                log.warning("paper %s / %s: our %s records come from %d models; not compared", p["paper_method"],
                            p["metric_id"], p["method"], sel["model"].nunique())
            elif not sel.empty:
                scale = float(sel["display_scale"].iloc[0])
                ours = float(pd.to_numeric(sel["value"], errors="coerce").mean() * scale)
        paper_value = float(p["value"]) / float(p["paper_scale"]) * scale  # paper units → ours
        arrow = "↑" if p["higher_is_better"] else "↓"
        scale_txt = "" if scale == 1 else f" ×{int(scale) if float(scale).is_integer() else scale:g}"
        name = f"{p['metric_id'] or p['paper_metric']}{scale_txt}"
        row[f"{name} paper {arrow}"] = paper_value
        row[f"{name} ours {arrow}"] = ours
        row[f"{name} Δ"] = ours - paper_value
    return pd.DataFrame(list(rows.values()))


def applicable_papers(edits: pd.DataFrame, long: pd.DataFrame, papers: dict[str, pd.DataFrame]) -> list[str]:
    """The paper tables measured on a dataset of the results that share at least one (method label,
    metric id) pair with them. Tables whose dataset is "*" (an unpublished image set) never apply
    automatically; name them (``write_tables(..., papers=[...])``, an experiment's ``paper:`` list)."""
    if edits.empty or long.empty:
        return []
    have = set(zip(long["dataset"], long["method"], long["metric_id"]))
    return [name for name, paper in papers.items()
            if any((p["dataset"], p["method"], p["metric_id"]) in have for _, p in paper.iterrows())]


def paper_markdown(comparison: pd.DataFrame) -> str:
    """Markdown for a paper-vs-ours table; the better of paper/ours in each metric is not bolded
    (they are different runs); Δ is signed."""
    if comparison.empty:
        return "_no rows_\n"
    headers = list(comparison.columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for _, row in comparison.iterrows():
        cells = []
        for h in headers:
            v = row[h]
            cells.append(f"{v:+.4g}" if h.endswith("Δ") and isinstance(v, float) and not math.isnan(v) else format_number(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
