"""Method vs method on shared items: each method's default point, per-item means, paired tests
(``bench tables RESULTS --compare A B`` and the report's matrices)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench import stats
from bench.table_stats import item_means
from bench.tables import default_points, metric_header


def default_item_values(long: pd.DataFrame, edits: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """metric id → DataFrame (items × method labels) of item means at each method's default point
    (display scale applied); methods without a default point are left out."""
    defaults = default_points(edits)
    long = long[[defaults.get(m) == p for m, p in zip(long["method"], long["point"])]]
    out = {}
    for metric_id, group in long.groupby("metric_id", sort=False):
        scaled = group.assign(value=pd.to_numeric(group["value"], errors="coerce") * group["display_scale"])
        out[str(metric_id)] = item_means(scaled, ["method"]).unstack("method")
    return out


def compare_methods(long: pd.DataFrame, edits: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """One row per metric: A − B at each method's default point on the items both scored (a metric
    only one of them has gets n = 0 and empty cells)."""
    methods, defaults = set(edits["method"]), default_points(edits)
    for name in (a, b):
        if name not in methods:
            raise ValueError(f"--compare: no records of method {name!r}; methods here: {sorted(methods)}")
        if name not in defaults:
            points = sorted(set(edits.loc[edits["method"] == name, "point"]))
            raise ValueError(f"--compare: {name!r} has several points and none has the values of "
                             f"conf/method/{name}.yaml; points: {points}")
    rows = []
    for metric_id, frame in default_item_values(long, edits).items():
        first = long.loc[long["metric_id"] == metric_id].iloc[0]
        higher = bool(first["higher_is_better"])
        missing = pd.Series(np.nan, index=frame.index)
        r = stats.paired_test(frame.get(a, missing).to_numpy(), frame.get(b, missing).to_numpy())
        better = "--"
        if r.significant():
            better = a if (r.diff > 0) == higher else b
        rows.append({"metric": metric_header(metric_id, float(first["display_scale"]), higher), "n": r.n,
                     a: r.mean_a, b: r.mean_b, f"{a} − {b}": r.diff, "se": r.se, "ci_low": r.ci_low,
                     "ci_high": r.ci_high, "p": r.p_value, "significantly better": better})
    return pd.DataFrame(rows)
