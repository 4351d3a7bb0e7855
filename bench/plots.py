"""Trade-off plots: CLIP score (text compliance) against LPIPS (fidelity to the source) per method.

Per method: every point of its hyperparameter grid (the rows of ``tables.summary_table``) as a dot, and
its curve through the Pareto-optimal points (no other point of the method is better on both axes;
a 1-D knob sweep with a monotone trade-off is the whole sweep); the paper-default point (its config's
values, see ``tables.default_points``) is drawn as a large star. Written as PNG and PDF with matplotlib's Agg
backend (no display needed).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import pandas as pd

from bench.io import atomic_path
from bench.tables import default_points, header_metric_id, load_edits, metric_columns, summary_table

log = logging.getLogger(__name__)

# preferred axes, first present wins (toy metric ids are matched by prefix after these)
X_METRICS = ("lpips_alex", "lpips_vgg", "bg_lpips_pie", "ns_lpips_sd", "ns_lpips_gt")
Y_METRICS = ("clip_score", "clip_score_pie", "clip_score_edit_pie")


def pick_axes(table: pd.DataFrame, x_metric: str | None = None,
              y_metric: str | None = None) -> tuple[str, str] | None:
    """(x column, y column) headers: LPIPS-like on x, CLIP-like on y; None when either is absent."""
    headers = {header_metric_id(c): c for c in metric_columns(table)}

    def choose(wanted: str | None, preferred: Iterable[str], fragment: str) -> str | None:
        if wanted:
            return headers.get(wanted)
        for metric_id in preferred:
            if metric_id in headers:
                return headers[metric_id]
        return next((h for m, h in headers.items() if fragment in m), None)

    x = choose(x_metric, X_METRICS, "lpips")
    y = choose(y_metric, Y_METRICS, "clip")
    return (x, y) if x and y else None


def pareto_front(points: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """The points no other point beats on both axes (directions from the ↑/↓ headers), sorted by x."""
    x_up, y_up = x.endswith("↑"), y.endswith("↑")
    values = points[[x, y]].to_numpy(dtype=float)
    keep = []
    for i, (xi, yi) in enumerate(values):
        dominated = False
        for j, (xj, yj) in enumerate(values):
            better_x = xj >= xi if x_up else xj <= xi
            better_y = yj >= yi if y_up else yj <= yi
            strictly = (xj != xi) or (yj != yi)
            if j != i and better_x and better_y and strictly:
                dominated = True
                break
        keep.append(not dominated)
    return points[keep].sort_values(x)


def star_meaning(edits: pd.DataFrame, defaults: dict[str, str]) -> str:
    """What the ★ marks: the paper default only when every starred point runs the paper's values."""
    starred = edits[[defaults.get(m) == p for m, p in zip(edits["method"], edits["point"])]]
    if starred.empty:
        return ""
    if (starred["changed"] == "").all():
        return "★ = paper default"
    return "★ = config default (≠ paper: see table)"


def tradeoff_figure(table: pd.DataFrame, x: str, y: str, defaults: dict[str, str], title: str = "",
                    star: str = "★ = paper default"):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6.4, 4.8), dpi=120)
    index = ["dataset", "method"] if "dataset" in table.columns else ["method"]
    cmap = plt.get_cmap("tab10")
    for k, (name, group) in enumerate(table.groupby(index, sort=True)):
        name = " / ".join(map(str, name)) if isinstance(name, tuple) else str(name)
        method = group["method"].iloc[0]
        group = group.dropna(subset=[x, y]).sort_values(x)
        if group.empty:
            continue
        color = cmap(k % 10)
        # every grid point (labelled with its swept values), and the method's curve: its Pareto front (no
        # other point better on both axes); the legend shows the points' marker, which every method has
        axes.scatter(group[x], group[y], s=14, color=color, alpha=0.45, label=name)
        for _, row in group.iterrows():
            if row["point"] != "default":
                axes.annotate(str(row["point"]), (row[x], row[y]), xytext=(3, 3), textcoords="offset points",
                              fontsize=6, color=color)
        front = pareto_front(group, x, y)
        axes.plot(front[x], front[y], marker="o", markersize=4, linewidth=1.4, color=color, label=f"_front_{name}")
        default = group[group["point"] == defaults.get(method)]
        if not default.empty:
            axes.scatter(default[x], default[y], marker="*", s=220, color=color, edgecolors="black",
                         linewidths=0.8, zorder=5, label=f"_default_{name}")
    axes.set_xlabel(x)
    axes.set_ylabel(y)
    axes.set_title(title or f"{header_metric_id(y)} vs {header_metric_id(x)}" + (f" ({star})" if star else ""))
    axes.grid(True, alpha=0.3)
    if axes.collections:
        axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


def write_tradeoff_plot(results_dir: str | Path, x_metric: str | None = None, y_metric: str | None = None,
                        out_dir: str | Path | None = None, stem: str = "tradeoff") -> dict[str, Path]:
    """Write <out_dir>/<stem>.png and .pdf (out_dir defaults to <results_dir>/plots); returns the
    paths, or {} (with a log line saying why) when the results have no CLIP- or LPIPS-like metric."""
    edits = load_edits(results_dir)
    table = summary_table(results_dir, edits)
    if table.empty:
        log.info("no plot: %s holds no records", results_dir)
        return {}
    axes = pick_axes(table, x_metric, y_metric)
    if axes is None:
        log.info("no trade-off plot: need an LPIPS-like and a CLIP-like metric, have %s",
                 [header_metric_id(c) for c in metric_columns(table)])
        return {}
    import matplotlib.pyplot as plt

    defaults = default_points(edits)
    figure = tradeoff_figure(table, *axes, defaults=defaults, star=star_meaning(edits, defaults))
    out = Path(out_dir or Path(results_dir) / "plots")
    paths = {}
    try:
        for fmt in ("png", "pdf"):
            path = out / f"{stem}.{fmt}"
            with atomic_path(path) as tmp:
                figure.savefig(tmp, format=fmt)
            paths[fmt] = path
    finally:
        plt.close(figure)
    return paths
