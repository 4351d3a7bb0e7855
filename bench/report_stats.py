"""The statistics sections of the HTML report (bench/report.py): rank agreement with a published table
and the method × method matrices of paired differences (docs/metrics.md, "Statistics")."""

from __future__ import annotations

from html import escape

import pandas as pd

from bench import comparisons, stats, table_stats
from bench.tables import metric_header


def _esc(value) -> str:
    return escape(str(value), quote=True)


def rank_agreement_html(comparison: pd.DataFrame, paper: pd.DataFrame, edits: pd.DataFrame) -> str:
    """Kendall τ / Spearman ρ of ours vs the published values per metric, labelled (same dataset / proxy)."""
    ranks = table_stats.paper_rank_agreement(comparison)
    if ranks.empty:
        return ""
    return (f"<p class='note'>Rank agreement of our means with the published ones "
            f"({_esc(table_stats.agreement_basis(paper, edits))}). "
            f"{_esc(table_stats.rank_note(int(ranks['methods'].max())))} See docs/metrics.md, Statistics.</p>"
            + ranks.to_html(index=False, border=0, float_format="{:.3g}".format))


def comparison_section(long: pd.DataFrame, edits: pd.DataFrame) -> list[str]:
    """Per metric a method × method matrix of row − column (default points, shared items); cells with
    p < ALPHA in the paired sign-flip test are bold, green where the row is better, red where worse."""
    if long.empty:
        return []
    note = (f"<p class='note'>Cell = row − column on the items both scored, each method at its default point; "
            f"bold = p &lt; {stats.ALPHA:g} ({_esc(table_stats.TEST_NAME)}), green: the row is significantly "
            f"better, red: worse; hover for the p-value and the {stats.LEVEL:.0%} bootstrap interval.</p>")
    parts = ["<h2>Method vs method</h2>", note]
    for metric_id, frame in comparisons.default_item_values(long, edits).items():
        first = long.loc[long["metric_id"] == metric_id].iloc[0]
        higher = bool(first["higher_is_better"])
        diff, p, ci = table_stats.pairwise_matrix(frame)
        out = [f"<table><caption>{_esc(metric_header(metric_id, float(first['display_scale']), higher))}</caption>",
               "<tr><th></th>" + "".join(f"<th>{_esc(m)}</th>" for m in diff.columns) + "</tr>"]
        for row in diff.index:
            cells = []
            for col in diff.columns:
                if row == col or pd.isna(p.loc[row, col]):
                    cells.append("<td class='note'>—</td>")
                    continue
                d = diff.loc[row, col]
                classes = ["sig", "better" if (d > 0) == higher else "worse"] if p.loc[row, col] < stats.ALPHA else []
                title = f"p = {p.loc[row, col]:.3g}, interval [{ci.loc[row, col][0]:.3g}, {ci.loc[row, col][1]:.3g}]"
                attr = f" class='{' '.join(classes)}'" if classes else ""
                cells.append(f"<td{attr} title='{_esc(title)}'>{_esc(f'{d:+.3g}')}</td>")
            out.append(f"<tr><th>{_esc(row)}</th>" + "".join(cells) + "</tr>")
        parts.append("\n".join(out + ["</table>"]))
    return parts
