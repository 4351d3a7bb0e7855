"""Aggregation: all records of a results dir → a long pandas DataFrame → method × metric tables.

Rows of the summary table are (dataset content, model, method label, hyperparameter point) — see
``bench.rows`` for what identifies a row and which records count (stale and superseded ones are
excluded and listed in tables/excluded.csv); a point is named by the hyperparameters that vary between
that method's records (e.g. ``strength=0.5``), "default" when none do. The dataset and model columns
appear when a results dir holds more than one.
Columns: n (ok items), failed, seeds, cost (NFE/item = inversion + edit UNet evaluations, the
algorithmic cost even when the inversion was reused; s/item likewise), ``psnr_vs_source`` (a
reconstruction fidelity figure that needs no learned metric), then every scored metric (mean over
items and seeds, display scale applied; NaN values skipped and counted in a ``<id> NaN`` column).
For stochastic methods run with several seeds, ``<id> std`` is the standard deviation of the
per-seed means. Statistics columns (``<id> se``, ``ci_low``, ``ci_high``, ``se_seed``, ``best``) come
from ``bench/table_stats.py`` and are shown as "mean ± se" (docs/metrics.md, "Statistics").

Rendered as markdown, CSV (numbers, unrounded) and LaTeX (booktabs); the best value of a metric
column is bold when it is significantly better than the runner-up; the header arrow gives its direction.

Published numbers (``results/paper/*.csv``, long format, one row per (paper method, paper column)
with its source and the mapping to our method label and metric id) are put side by side with ours:
``paper | ours | Δ`` per metric, in our display units.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench import records, table_stats
from bench.formatting import format_number
from bench.presets import changed_from_paper, order_points, record_paper_defaults, same
from bench.rows import add_row_labels, comparable_groups, record_identity, row_index, split_current

log = logging.getLogger(__name__)

COST_COLUMNS = {"nfe_per_item": "NFE/item", "seconds_per_item": "s/item"}
CHANGED_COLUMN = "≠ paper default"  # hyperparameters that differ from the method's paper defaults [preset]


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


def varying_hparams(frame: pd.DataFrame, method: str) -> list[str]:
    """The hyperparameter names that vary between the records of ``method`` (its sweep knobs)."""
    hparams = [json.loads(h) for h in frame.loc[frame["method"] == method, "hparams"]]
    keys = sorted({k for h in hparams for k in h})
    return [k for k in keys if len({json.dumps(h.get(k), sort_keys=True) for h in hparams}) > 1]


def default_points(edits: pd.DataFrame) -> dict[str, str]:
    """method label → the point label whose swept knobs equal the method config's values.

    A method with a single point maps to it; a method whose config is unknown or whose grid does
    not contain the config's values has no entry."""
    result: dict[str, str] = {}
    if edits.empty:
        return result
    for method, group in edits.groupby("method"):
        points = group.drop_duplicates("point")
        if len(points) == 1:
            result[str(method)] = str(points["point"].iloc[0])
            continue
        defaults = record_paper_defaults(edits, str(method))
        knobs = varying_hparams(edits, str(method))
        if not defaults or not all(k in defaults for k in knobs):
            continue
        for _, row in points.iterrows():
            hp = json.loads(row["hparams"])
            if all(same(hp.get(k), defaults[k]) for k in knobs):
                result[str(method)] = str(row["point"])
                break
    return result


def edit_row(rec: dict[str, Any]) -> dict[str, Any]:
    """One edit record as a frame row (``bench.rows.record_identity`` adds what identifies its table row)."""
    cost = rec.get("cost", {})
    return {
        "key": rec["key"], "status": rec["status"], "method": rec["method"]["label"],
        "method_name": rec["method"]["name"], "stochastic": rec["method"].get("stochastic", False),
        "hparams": json.dumps(rec["method"]["hparams"], sort_keys=True),
        "preset": rec["method"].get("preset"),
        "paper_defaults": json.dumps(rec["method"]["paper_defaults"]) if rec["method"].get("paper_defaults") else "",
        "item_id": rec["item"]["item_id"], "seed": rec["seed"],
        "image_id": rec["item"].get("image_id", rec["item"]["item_id"]),
        "source_prompt": rec["item"].get("source_prompt", ""),
        "target_prompt": rec["item"].get("target_prompt", ""),
        "edit_category": rec["item"].get("edit_category", ""),
        "nfe_per_item": cost.get("inversion_nfe", 0) + cost.get("edit_nfe", 0) if cost else math.nan,
        "nfe_backward_per_item": cost.get("inversion_nfe_backward", 0) + cost.get("edit_nfe_backward", 0)
        if cost else math.nan,
        "seconds_per_item": cost.get("inversion_seconds", 0.0) + cost.get("edit_seconds", 0.0) if cost else math.nan,
        "psnr_vs_source": rec.get("quick", {}).get("psnr_vs_source", math.nan),
        "edited": rec.get("files", {}).get("edited"), "source": rec.get("files", {}).get("source"),
        "error": (rec.get("error") or {}).get("message"), **record_identity(rec),
    }


def edits_frame(recs: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Edit records → one row each (ok and failed), with row labels and point names, sorted."""
    frame = pd.DataFrame([edit_row(rec) for rec in recs])
    if not frame.empty:
        frame = add_row_labels(frame)
        frame = frame.sort_values(["method", "dataset", "item_id", "seed", "key"], kind="stable").reset_index(drop=True)
        frame["point"] = _point_labels(frame)
        frame["changed"] = changed_from_paper(frame)
    return frame


def load_all_edits(results_dir: str | Path) -> pd.DataFrame:
    """Every edit record of a results dir, including superseded and stale ones."""
    return edits_frame(records.iter_edit_records(results_dir))


def load_edits(results_dir: str | Path) -> pd.DataFrame:
    """The edit records that count (one per table row, item and seed; see ``bench.rows``)."""
    frame = load_all_edits(results_dir)
    if frame.empty:
        return frame
    current = split_current(frame)[0]
    return current.assign(point=_point_labels(current)).reset_index(drop=True)


def load_metrics(results_dir: str | Path) -> pd.DataFrame:
    """One row per metric record: edit_key, metric_id, value, display_scale, higher_is_better."""
    rows = [{"edit_key": r["edit_key"], "metric_id": r["metric_id"], "value": r["value"],
             "display_scale": r.get("display_scale", 1.0), "higher_is_better": r.get("higher_is_better", True)}
            for r in records.iter_metric_records(results_dir)]
    return pd.DataFrame(rows, columns=["edit_key", "metric_id", "value", "display_scale", "higher_is_better"])


BASE_COLUMNS = ["key", "method", "point", "dataset", "model", "item_id", "seed", "edit_category"]


def load_long(results_dir: str | Path, edits: pd.DataFrame | None = None) -> pd.DataFrame:
    """Long format: one row per (ok edit record, metric) including the built-in psnr_vs_source."""
    edits = load_edits(results_dir) if edits is None else edits
    if edits.empty:
        return pd.DataFrame()
    ok = edits[edits["status"] == "ok"]
    quick = ok[BASE_COLUMNS].assign(metric_id="psnr_vs_source", value=ok["psnr_vs_source"], display_scale=1.0,
                                    higher_is_better=True)
    metrics = load_metrics(results_dir)
    scored = ok[BASE_COLUMNS].merge(metrics, left_on="key", right_on="edit_key").drop(columns="edit_key")
    parts = [quick] + ([scored] if not scored.empty else [])
    return pd.concat(parts, ignore_index=True)


def metric_header(metric_id: str, scale: float, higher_is_better: bool) -> str:
    arrow = "↑" if higher_is_better else "↓"
    scale_txt = "" if scale == 1 else f" ×{int(scale) if float(scale).is_integer() else scale:g}"
    return f"{metric_id}{scale_txt} {arrow}"


def header_metric_id(header: str) -> str:
    """Inverse of ``metric_header`` for the id part ('clip_score ×100 ↑' → 'clip_score')."""
    return header.split(" ")[0]


def summary_table(results_dir: str | Path, edits: pd.DataFrame | None = None) -> pd.DataFrame:
    """method × metric: mean over items and seeds (NaN skipped), plus counts, cost and std columns."""
    edits = load_edits(results_dir) if edits is None else edits
    if edits.empty:
        return pd.DataFrame()
    index = row_index(edits)
    table = edits.groupby(index).agg(n=("status", lambda s: int((s == "ok").sum())),
                                     failed=("status", lambda s: int((s == "failed").sum())))
    table.insert(0, CHANGED_COLUMN, edits.groupby(index)["changed"].agg(lambda c: " / ".join(dict.fromkeys(c))))
    ok = edits[edits["status"] == "ok"]
    table["seeds"] = ok.groupby(index)["seed"].nunique()
    table["seeds"] = table["seeds"].fillna(0).astype(int)
    for column, header in COST_COLUMNS.items():
        table[header] = ok.groupby(index)[column].mean()
    stochastic = edits.groupby(index)["stochastic"].any()
    long = load_long(results_dir, edits)
    if not long.empty:
        for metric_id, group in long.groupby("metric_id", sort=False):
            scale, higher = float(group["display_scale"].iloc[0]), bool(group["higher_is_better"].iloc[0])
            values = group.assign(value=pd.to_numeric(group["value"], errors="coerce") * scale)
            header = metric_header(metric_id, scale, higher)
            table[header] = values.groupby(index)["value"].mean()
            # std over seeds of the per-seed means, for stochastic methods with more than one seed
            per_seed = values.groupby(index + ["seed"])["value"].mean().groupby(index).agg(["std", "count"])
            std = per_seed["std"].where((per_seed["count"] > 1) & stochastic.reindex(per_seed.index, fill_value=False))
            if std.notna().any():
                table[f"{metric_id} std"] = std
            table_stats.add_metric_statistics(table, values, index, metric_id, higher, stochastic)
            nan_count = values.groupby(index)["value"].apply(lambda v: int(v.isna().sum()))
            if nan_count.any():
                table[f"{metric_id} NaN"] = nan_count.reindex(table.index, fill_value=0).astype(int)
    return order_points(table.reset_index())


# ----------------------------------------------------------------------------------------------
# rendering: cells as strings, best per metric column marked


def metric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.endswith("↑") or c.endswith("↓")]


def best_rows(table: pd.DataFrame, column: str) -> set[int]:
    """Row positions to bold in a ↑/↓ column: the significant best of a summary table (``<id> best``), else
    the best value among rows of the same dataset and model (ties all count; NaN never wins)."""
    significant = table_stats.best_flags(table, column, header_metric_id(column))
    if significant is not None:
        return significant
    values = pd.to_numeric(table[column], errors="coerce").reset_index(drop=True)
    best_positions: set[int] = set()
    for group in comparable_groups(table):
        group_values = values.iloc[group]
        if group_values.notna().sum() < 2:  # a single row or value: nothing to compare
            continue
        best = group_values.max() if column.endswith("↑") else group_values.min()
        best_positions |= {i for i, v in group_values.items()
                           if pd.notna(v) and math.isclose(v, best, rel_tol=1e-12, abs_tol=1e-15)}
    return best_positions




def display_cells(table: pd.DataFrame, digits: int = 4) -> tuple[list[str], list[list[str]], list[list[bool]]]:
    """(headers, rows of strings, bold flags): statistics and NaN columns folded into their metric
    column ("mean ± se (seeds ± x)", "(k NaN)"), best value per metric column flagged (``best_rows``)."""
    shown = [c for c in table.columns if not table_stats.is_stat_column(c)]
    bold_cols = {c: best_rows(table, c) for c in metric_columns(table)}
    rows, flags = [], []
    for i, (_, row) in enumerate(table.iterrows()):
        cells, marks = [], []
        for column in shown:
            text = format_number(row[column], digits)
            if column in bold_cols:
                metric_id = header_metric_id(column)
                text = table_stats.cell_text(text, row, metric_id)
                nans = row.get(f"{metric_id} NaN")
                if nans is not None and pd.notna(nans) and int(nans) > 0:
                    text = f"{text} ({int(nans)} NaN)"
            cells.append(text)
            marks.append(i in bold_cols.get(column, set()))
        rows.append(cells)
        flags.append(marks)
    return shown, rows, flags


def to_markdown(table: pd.DataFrame) -> str:
    if table.empty:
        return "_no records_\n"
    headers, rows, flags = display_cells(table)
    body = [[f"**{c}**" if b else c for c, b in zip(r, f)] for r, f in zip(rows, flags)]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in body]
    note = table_stats.table_note(table)
    return "\n".join(lines + ([f"\n{note}"] if note else []) + nan_footnote(table)) + "\n"


NAN_REASONS = {"recon_": "reconstruction metrics score only items whose target prompt is the source prompt",
               "ns_lpips_sd": "NS-LPIPS needs the item's blend words", "_pie": "PIE-Bench metrics need an edit mask",
               "bg_": "background metrics need an edit mask", "edit_accuracy": "needs a toy-world item"}


def nan_footnote(table: pd.DataFrame) -> list[str]:
    """A footnote under the table for every metric with '-- (k NaN)' cells, saying why scores are undefined."""
    notes = []
    for column in (c for c in table.columns if c.endswith(" NaN") and table[c].fillna(0).astype(int).gt(0).any()):
        metric_id = column[: -len(" NaN")]
        reason = next((why for fragment, why in NAN_REASONS.items() if fragment in metric_id),
                      "the metric is undefined for these items")
        notes.append(f"- `{metric_id}`: (k NaN) = k scores undefined: {reason} (docs/metrics.md).")
    return [""] + notes if notes else []


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    out = "".join(LATEX_SPECIAL.get(ch, ch) for ch in str(text))
    return (out.replace("↑", r"$\uparrow$").replace("↓", r"$\downarrow$").replace("±", r"$\pm$")
            .replace("×", r"$\times$").replace("Δ", r"$\Delta$"))


def to_latex(table: pd.DataFrame, caption: str | None = None) -> str:
    """A booktabs tabular: best value per metric column in bold, ↑/↓ as math arrows."""
    if table.empty:
        return ""
    headers, rows, flags = display_cells(table, digits=3)
    align = "".join("l" if not pd.api.types.is_numeric_dtype(table[h]) else "r" for h in headers)
    lines = [r"\begin{tabular}{" + align + "}", r"\toprule",
             " & ".join(latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    for r, f in zip(rows, flags):
        cells = [r"\textbf{" + latex_escape(c) + "}" if b else latex_escape(c) for c, b in zip(r, f)]
        lines.append(" & ".join(cells) + r" \\")
    lines.append(r"\bottomrule")
    if note := table_stats.table_note(table):
        lines.append(rf"\multicolumn{{{len(headers)}}}{{p{{\linewidth}}}}{{\footnotesize {latex_escape(note)}}} \\")
    lines.append(r"\end{tabular}")
    body = "\n".join(lines) + "\n"
    if caption:
        body = ("\\begin{table}[t]\n\\centering\n" + body + "\\caption{" + latex_escape(caption) + "}\n\\end{table}\n")
    return body
