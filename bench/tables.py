"""Aggregation: all records of a results dir → a long pandas DataFrame → method × metric tables.

Rows of the summary table are (method label, hyperparameter point); a point is named by the
hyperparameters that vary between that method's records (e.g. ``strength=0.5``), "default" when
none do. Columns: n (ok items), failed, cost (NFE/item = inversion + edit UNet evaluations, the
algorithmic cost even when the inversion was reused; s/item likewise), ``psnr_vs_source`` (a
reconstruction fidelity figure that needs no learned metric), then every scored metric (mean,
display scale applied; NaN values skipped and counted). Written as markdown, CSV and LaTeX.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from bench import records
from bench.io import write_text

COST_COLUMNS = {"nfe_per_item": "NFE/item", "seconds_per_item": "s/item"}


def _point_labels(frame: pd.DataFrame) -> pd.Series:
    """Per record: the hparams that vary within its method label, as 'k=v, k=v' (else 'default')."""
    labels = pd.Series("default", index=frame.index, dtype=object)
    for _, group in frame.groupby("method"):
        hparams = [json.loads(h) for h in group["hparams"]]
        keys = sorted({k for h in hparams for k in h})
        varying = [k for k in keys if len({json.dumps(h.get(k), sort_keys=True) for h in hparams}) > 1]
        if varying:
            labels.loc[group.index] = [", ".join(f"{k}={h.get(k)}" for k in varying) for h in hparams]
    return labels


def load_edits(results_dir: str | Path) -> pd.DataFrame:
    """One row per edit record (ok and failed)."""
    rows = []
    for rec in records.iter_edit_records(results_dir):
        cost = rec.get("cost", {})
        rows.append({
            "key": rec["key"], "status": rec["status"], "method": rec["method"]["label"],
            "method_name": rec["method"]["name"], "stochastic": rec["method"].get("stochastic", False),
            "hparams": json.dumps(rec["method"]["hparams"], sort_keys=True),
            "dataset": rec["dataset"]["name"], "item_id": rec["item"]["item_id"], "seed": rec["seed"],
            "edit_category": rec["item"].get("edit_category", ""),
            "nfe_per_item": cost.get("inversion_nfe", 0) + cost.get("edit_nfe", 0) if cost else math.nan,
            "nfe_backward_per_item": cost.get("inversion_nfe_backward", 0) + cost.get("edit_nfe_backward", 0)
            if cost else math.nan,
            "seconds_per_item": cost.get("inversion_seconds", 0.0) + cost.get("edit_seconds", 0.0) if cost else math.nan,
            "psnr_vs_source": rec.get("quick", {}).get("psnr_vs_source", math.nan),
            "edited": rec.get("files", {}).get("edited"), "source": rec.get("files", {}).get("source"),
            "error": (rec.get("error") or {}).get("message"),
        })
    frame = pd.DataFrame(rows)
    if not frame.empty:
        frame["point"] = _point_labels(frame)
    return frame


def load_metrics(results_dir: str | Path) -> pd.DataFrame:
    """One row per metric record: edit_key, metric_id, value, display_scale, higher_is_better."""
    rows = [{"edit_key": r["edit_key"], "metric_id": r["metric_id"], "value": r["value"],
             "display_scale": r.get("display_scale", 1.0), "higher_is_better": r.get("higher_is_better", True)}
            for r in records.iter_metric_records(results_dir)]
    return pd.DataFrame(rows, columns=["edit_key", "metric_id", "value", "display_scale", "higher_is_better"])


def load_long(results_dir: str | Path) -> pd.DataFrame:
    """Long format: one row per (ok edit record, metric) including the built-in psnr_vs_source."""
    edits = load_edits(results_dir)
    if edits.empty:
        return pd.DataFrame()
    ok = edits[edits["status"] == "ok"]
    base_cols = ["key", "method", "point", "dataset", "item_id", "seed", "edit_category"]
    quick = ok[base_cols].assign(metric_id="psnr_vs_source", value=ok["psnr_vs_source"], display_scale=1.0,
                                 higher_is_better=True)
    metrics = load_metrics(results_dir)
    scored = ok[base_cols].merge(metrics, left_on="key", right_on="edit_key").drop(columns="edit_key")
    return pd.concat([quick, scored], ignore_index=True)


def metric_header(metric_id: str, scale: float, higher_is_better: bool) -> str:
    arrow = "↑" if higher_is_better else "↓"
    scale_txt = "" if scale == 1 else f" ×{int(scale) if float(scale).is_integer() else scale:g}"
    return f"{metric_id}{scale_txt} {arrow}"


def summary_table(results_dir: str | Path) -> pd.DataFrame:
    """method × metric: mean over items and seeds (NaN skipped), plus counts and cost columns."""
    edits = load_edits(results_dir)
    if edits.empty:
        return pd.DataFrame()
    index = ["method", "point"]
    table = edits.groupby(index).agg(n=("status", lambda s: int((s == "ok").sum())),
                                     failed=("status", lambda s: int((s == "failed").sum())))
    ok = edits[edits["status"] == "ok"]
    for column, header in COST_COLUMNS.items():
        table[header] = ok.groupby(index)[column].mean()
    long = load_long(results_dir)
    if not long.empty:
        for metric_id, group in long.groupby("metric_id", sort=False):
            scale, higher = float(group["display_scale"].iloc[0]), bool(group["higher_is_better"].iloc[0])
            values = group.assign(value=pd.to_numeric(group["value"], errors="coerce") * scale)
            table[metric_header(metric_id, scale, higher)] = values.groupby(index)["value"].mean()
            nan_count = values.groupby(index)["value"].apply(lambda v: int(v.isna().sum()))
            if nan_count.any():
                table[f"{metric_id} NaN"] = nan_count
    return table.reset_index()


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no records_\n"
    return table.to_markdown(index=False, floatfmt=".4g") + "\n"


def to_latex(table: pd.DataFrame) -> str:
    """LaTeX via pandas Styler: best value per metric column in bold (direction from the ↑/↓ header)."""
    if table.empty:
        return ""
    styler = table.style.format(precision=3, na_rep="--").hide(axis="index")
    for column in table.columns:
        if column.endswith("↑"):
            styler = styler.highlight_max(subset=[column], props="textbf:--rwrap;")
        elif column.endswith("↓"):
            styler = styler.highlight_min(subset=[column], props="textbf:--rwrap;")
    return styler.to_latex(hrules=True)


def write_tables(results_dir: str | Path) -> dict[str, Path]:
    """Write tables/summary.{md,csv,tex} for a results dir; returns the paths."""
    out = Path(results_dir) / "tables"
    table = summary_table(results_dir)
    paths = {"md": out / "summary.md", "csv": out / "summary.csv", "tex": out / "summary.tex"}
    write_text(paths["md"], to_markdown(table))
    write_text(paths["csv"], table.to_csv(index=False))
    write_text(paths["tex"], to_latex(table))
    failures = load_edits(results_dir)
    if not failures.empty:
        failed = failures[failures["status"] == "failed"][["method", "point", "item_id", "error"]]
        write_text(out / "failures.csv", failed.to_csv(index=False))
    return paths


def describe_table(table: pd.DataFrame) -> dict[str, Any]:
    return {"rows": len(table), "columns": list(table.columns)}
