"""Statistics columns of the summary table, paired method comparisons and paper rank agreement
(the pandas side of ``bench/stats.py``; how to read them: docs/metrics.md, "Statistics").

Per (row, metric) of the summary table, computed on the item means (each item's mean over its seeds,
display scale applied): ``<id> se`` (standard error over items), ``<id> ci_low`` / ``<id> ci_high``
(95 % percentile bootstrap over items, seeded), ``<id> se_seed`` (stochastic methods with several
seeds: std of the per-seed means / sqrt(k)) and ``<id> best`` (True on the best row only when it is
better than the runner-up at p < 0.05, paired sign-flip permutation test on their shared items).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from bench import stats
from bench.formatting import format_number
from bench.rows import CONTEXT_COLUMNS

ITEM_KEYS = ["dataset", "item_id"]
STAT_SUFFIXES = (" std", " NaN", " se", " ci_low", " ci_high", " se_seed", " best")
TEST_NAME = "two-sided paired sign-flip permutation test on the shared items"


def is_stat_column(column: str) -> bool:
    """Columns folded into their metric's cell (markdown/LaTeX/HTML) and kept in full in the CSV."""
    return column.endswith(STAT_SUFFIXES)


def item_means(values: pd.DataFrame, keys: list[str]) -> pd.Series:
    """Mean over seeds per (keys…, item): the unit every statistic resamples."""
    items = keys + [k for k in ITEM_KEYS if k not in keys]
    return values.groupby(items)["value"].mean()


def _paired(per_item: pd.Series, row_a: Any, row_b: Any, levels: int) -> stats.PairedResult:
    """A − B on the items both rows have (``levels`` = number of row-key levels before the item keys)."""
    a, b = per_item.xs(_key(row_a), level=list(range(levels))), per_item.xs(_key(row_b), level=list(range(levels)))
    a, b = a.align(b, join="inner")
    return stats.paired_test(a.to_numpy(), b.to_numpy())


def _key(row: Any) -> tuple:
    return row if isinstance(row, tuple) else (row,)


def add_metric_statistics(table: pd.DataFrame, values: pd.DataFrame, index: list[str], metric_id: str,
                          higher: bool, stochastic: pd.Series) -> None:
    """In place on ``table`` (indexed by ``index``): the se / ci / se_seed / best columns of one metric.

    ``values``: the metric's long rows (``index`` columns, dataset, item_id, seed, scaled ``value``)."""
    per_item = item_means(values, index)
    levels = len(index)
    summaries = {row: stats.summarize(group.to_numpy()) for row, group in per_item.groupby(level=list(range(levels)))}
    for field in ("se", "ci_low", "ci_high"):
        table[f"{metric_id} {field}"] = pd.Series({_key(r): getattr(s, field) for r, s in summaries.items()},
                                                  dtype=float).reindex(table.index)
    seed_means = values.groupby(index + ["seed"])["value"].mean()
    se_seed = seed_means.groupby(level=list(range(levels))).agg(lambda m: stats.seed_standard_error(m.to_numpy()))
    counts = seed_means.groupby(level=list(range(levels))).count()
    se_seed = se_seed.where((counts > 1) & stochastic.reindex(se_seed.index, fill_value=False))
    if se_seed.notna().any():
        table[f"{metric_id} se_seed"] = se_seed.reindex(table.index)
    table[f"{metric_id} best"] = significant_best(pd.Series({_key(r): s.mean for r, s in summaries.items()}),
                                                  per_item, levels, index, higher).reindex(table.index,
                                                                                          fill_value=False)


def significant_best(means: pd.Series, per_item: pd.Series, levels: int, index: list[str],
                     higher: bool) -> pd.Series:
    """True for the best row of each (dataset, model) when it beats the runner-up significantly
    (``TEST_NAME``, p < stats.ALPHA); a tie or a runner-up without shared items marks nothing."""
    flags = pd.Series(False, index=means.index, dtype=bool)
    means = means.dropna()
    context = [index.index(column) for column in CONTEXT_COLUMNS if column in index]
    groups = means.groupby(level=context) if context else [(None, means)]
    for _, group in groups:
        if len(group) < 2:
            continue
        ordered = group.sort_values(ascending=not higher, kind="stable")
        best, runner_up = ordered.index[0], ordered.index[1]
        if math.isclose(ordered.iloc[0], ordered.iloc[1], rel_tol=1e-12, abs_tol=1e-15):
            continue
        if _paired(per_item, best, runner_up, levels).significant():
            flags[best] = True
    return flags


def best_flags(table: pd.DataFrame, column: str, metric_id: str) -> set[int] | None:
    """Row positions to bold in a metric column: the ``<id> best`` flags when the table has them,
    None otherwise (tables without per-item data, e.g. paper vs ours, keep the plain best value)."""
    flags = table.get(f"{metric_id} best")
    if flags is None:
        return None
    return {i for i, flag in enumerate(flags) if bool(flag)}


def cell_text(text: str, row: pd.Series, metric_id: str) -> str:
    """'mean' → 'mean ± se' (+ ' (seeds ± se_seed)' for stochastic methods run with several seeds)."""
    se, se_seed = row.get(f"{metric_id} se"), row.get(f"{metric_id} se_seed")
    if se is not None and pd.notna(se):
        text = f"{text} ± {format_number(float(se), 2)}"
    if se_seed is not None and pd.notna(se_seed):
        text = f"{text} (seeds ± {format_number(float(se_seed), 2)})"
    return text


def table_note(table: pd.DataFrame) -> str:
    """The footnote of a summary table with statistics columns ('' for other tables)."""
    if not any(c.endswith(" se") for c in table.columns):
        return ""
    return (f"± = standard error over items (each item averaged over its seeds); (seeds ± x) = the seed "
            f"component of stochastic methods; bold = best and better than the runner-up at p < {stats.ALPHA:g} "
            f"({TEST_NAME}); the CSV adds the {stats.LEVEL:.0%} bootstrap interval over items "
            f"({stats.N_BOOT} resamples, seed {stats.SEED}). See docs/metrics.md, Statistics.")


def pairwise_matrix(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(row − column differences, p-values, (ci_low, ci_high) of the difference) over every pair of
    methods (the columns of ``frame``: items × methods)."""
    methods = list(frame.columns)
    diff = pd.DataFrame(np.nan, index=methods, columns=methods)
    p = diff.copy()
    ci = pd.DataFrame(None, index=methods, columns=methods, dtype=object)
    for i, row in enumerate(methods):
        for col in methods[i + 1:]:
            r = stats.paired_test(frame[row].to_numpy(), frame[col].to_numpy())
            diff.loc[row, col], diff.loc[col, row] = r.diff, -r.diff
            p.loc[row, col] = p.loc[col, row] = r.p_value
            ci.loc[row, col], ci.loc[col, row] = (r.ci_low, r.ci_high), (-r.ci_high, -r.ci_low)
    return diff, p, ci


# ----------------------------------------------------------------------------------------------
# agreement with a published table


def paper_rank_agreement(comparison: pd.DataFrame) -> pd.DataFrame:
    """Per metric of a ``paper_tables.paper_comparison`` frame: Kendall τ_b and Spearman ρ between the
    published values and ours over the paper methods that have both, with exact permutation p-values."""
    rows = []
    for column in comparison.columns:
        if " paper " not in column:
            continue
        name, arrow = column.split(" paper ")
        ours = comparison.get(f"{name} ours {arrow}")
        if ours is None:
            continue
        r = stats.rank_agreement(comparison[column].to_numpy(dtype=float), ours.to_numpy(dtype=float))
        rows.append({"metric": f"{name} {arrow}", "methods": r.n, "Kendall τ": r.tau, "p (τ)": r.p_tau,
                     "Spearman ρ": r.rho, "p (ρ)": r.p_rho})
    return pd.DataFrame(rows, columns=["metric", "methods", "Kendall τ", "p (τ)", "Spearman ρ", "p (ρ)"])


def agreement_basis(paper: pd.DataFrame, edits: pd.DataFrame) -> str:
    """'same dataset' when the published table was measured on a dataset of these results, else a proxy label."""
    ours = sorted(set(edits["dataset"])) if not edits.empty else []
    theirs = sorted(set(paper["dataset"]) - {""})
    if theirs and set(theirs) <= set(ours):
        return f"same dataset ({', '.join(theirs)})"
    world = "the toy world" if any(d.startswith("toy") for d in ours) else ", ".join(ours)
    published = "unpublished image set" if theirs == ["*"] else ", ".join(theirs)
    return f"proxy: {world} vs the paper's {published}" + (", and another model" if world == "the toy world" else "")

def rank_agreement_markdown(ranks: pd.DataFrame, basis: str) -> str:
    if ranks.empty:
        return ""
    lines = [f"Rank agreement with the published values ({basis}):", "",
             "| " + " | ".join(ranks.columns) + " |", "|" + "|".join("---" for _ in ranks.columns) + "|"]
    lines += ["| " + " | ".join(format_number(v, 3) for v in row) + " |" for row in ranks.itertuples(index=False)]
    if note := rank_note(int(ranks["methods"].max())):
        lines += ["", note]
    return "\n" + "\n".join(lines) + "\n"


def rank_note(n: int) -> str:
    """What the p-values of a rank agreement over n methods mean, and the smallest one n allows."""
    if not 3 <= n <= stats.EXACT_RANKS_MAX_N:
        return ""
    floor = stats.rank_agreement(np.arange(n), np.arange(n)).p_tau
    return (f"p = exact two-sided permutation p-value. With {n} methods even identical orderings have "
            f"p = {floor:.3g}: a rank agreement over so few points is a description, not evidence.")
