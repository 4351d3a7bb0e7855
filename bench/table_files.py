"""Writing a results dir's tables: ``tables/summary.{md,csv,tex}``, ``failures.csv``, ``excluded.csv`` and
the published-numbers comparisons ``paper_<name>.*`` (with rank agreement)."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from bench import table_stats
from bench.io import write_text
from bench.paper_tables import PAPER_DIR, applicable_papers, paper_comparison, paper_markdown, paper_tables
from bench.rows import split_current
from bench.tables import load_all_edits, load_edits, load_long, summary_table, to_latex, to_markdown


def write_tables(results_dir: str | Path, papers: Iterable[str] | None = None,
                 paper_dir: str | Path | None = None) -> dict[str, Path]:
    """Write tables/summary.{md,csv,tex} (+ failures.csv, + paper_<name>.{md,csv,tex} for the
    published tables named in ``papers`` and every one that applies automatically, see
    ``applicable_papers``) for a results dir; returns the paths."""
    out = Path(results_dir) / "tables"
    edits = load_edits(results_dir)
    table = summary_table(results_dir, edits)
    paths = {"md": out / "summary.md", "csv": out / "summary.csv", "tex": out / "summary.tex"}
    write_text(paths["md"], to_markdown(table))
    write_text(paths["csv"], table.to_csv(index=False))
    write_text(paths["tex"], to_latex(table))
    excluded = split_current(load_all_edits(results_dir))[1] if not edits.empty else pd.DataFrame()
    if not excluded.empty:  # counted and listed, never silently dropped
        write_text(paths["md"], to_markdown(table) + f"\n_{len(excluded)} record(s) excluded (superseded failures, "
                   "stale results): tables/excluded.csv_\n")
        paths["excluded"] = out / "excluded.csv"
        write_text(paths["excluded"], excluded[["dataset", "model", "method", "point", "item_id", "seed", "status",
                                                "key", "reason"]].to_csv(index=False))
    if not edits.empty:
        failed = edits[edits["status"] == "failed"][["method", "point", "item_id", "error"]]
        write_text(out / "failures.csv", failed.to_csv(index=False))
        long = load_long(results_dir, edits)
        known = paper_tables(paper_dir)
        wanted = list(papers or [])
        unknown = [name for name in wanted if name not in known]
        if unknown:
            raise ValueError(f"unknown paper table(s) {unknown}; available: {sorted(known)} "
                             f"({Path(paper_dir or PAPER_DIR)})")
        for name in dict.fromkeys(wanted + applicable_papers(edits, long, known)):
            comparison = paper_comparison(results_dir, known[name], edits)
            stem = out / f"paper_{name}"
            ranks = table_stats.paper_rank_agreement(comparison)
            write_text(stem.with_suffix(".md"), paper_markdown(comparison)
                       + table_stats.rank_agreement_markdown(ranks, table_stats.agreement_basis(known[name], edits)))
            write_text(out / f"paper_{name}_ranks.csv", ranks.to_csv(index=False))
            write_text(stem.with_suffix(".csv"), comparison.to_csv(index=False))
            write_text(stem.with_suffix(".tex"), to_latex(comparison))
            paths[f"paper_{name}"] = stem.with_suffix(".md")
    return paths


def iter_table_files(results_dir: str | Path) -> Iterable[Path]:
    out = Path(results_dir) / "tables"
    return sorted(p for p in out.glob("*") if p.is_file() and ".tmp-" not in p.name) if out.is_dir() else []
