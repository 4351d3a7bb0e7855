"""Hydra callbacks. ``AggregateResults`` (registered in conf/config.yaml under ``hydra.callbacks``) runs
on the submitting machine when a multirun ends, after every job (local, joblib or SLURM array task)
has returned, and merges all jobs' records into the tables, the trade-off plot and the HTML report of
each results dir the jobs wrote into. Each job only ever writes its own content-addressed files, so
this merge is a pure read of the records; re-running it (or ``bench report``) gives the same tables.

Imports stay inside the methods: Hydra instantiates callbacks for every run, including single jobs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def job_results_dirs(sweep_dir: str | Path) -> list[Path]:
    """The ``paths.results_dir`` of every job config saved under a sweep dir (<sweep>/<n>/.hydra/config.yaml)."""
    dirs = []
    for config_path in sorted(Path(sweep_dir).glob("*/.hydra/config.yaml")):
        try:
            job_cfg = OmegaConf.load(config_path)
            value = OmegaConf.select(job_cfg, "paths.results_dir", throw_on_resolution_failure=False)
        except Exception as err:  # a job config that cannot be read should not hide the others
            log.warning("cannot read %s: %s", config_path, err)
            continue
        if value:
            dirs.append(Path(str(value)))
    return dirs


def aggregate(results_dir: str | Path, papers: list[str] | None = None, report: bool = True,
              sweep_dirs: list[str | Path] = ()) -> dict[str, Any]:
    """Tables, plot and report of one results dir; returns what was written."""
    from bench.plots import write_tradeoff_plot
    from bench.table_files import write_tables

    results_dir = Path(results_dir)
    written: dict[str, Any] = {"tables": write_tables(results_dir, papers=papers)}
    if report:  # the report (re)writes the plot it embeds
        from bench.report import build_report

        written["report"] = build_report(results_dir, papers=papers, sweep_dirs=sweep_dirs)
        plots = results_dir / "plots"
        written["plots"] = {fmt: plots / f"tradeoff.{fmt}" for fmt in ("png", "pdf")
                            if (plots / f"tradeoff.{fmt}").is_file()}
    else:
        written["plots"] = write_tradeoff_plot(results_dir)
    return written


class AggregateResults(Callback):
    """Merge all jobs' records into tables (+ plot, + report) at multirun end."""

    def __init__(self, report: bool = True) -> None:
        self.report = report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        candidates = []
        base = OmegaConf.select(config, "paths.results_dir", throw_on_resolution_failure=False)
        if base:
            candidates.append(Path(str(base)))
        sweep_dir = OmegaConf.select(config, "hydra.sweep.dir", throw_on_resolution_failure=False)
        if sweep_dir:
            candidates += job_results_dirs(sweep_dir)
        papers = OmegaConf.select(config, "paper", default=None, throw_on_resolution_failure=False)
        papers = [str(p) for p in papers] if papers else None
        for results_dir in dict.fromkeys(p.resolve() for p in candidates):
            if not (results_dir / "edits").is_dir():
                continue
            try:
                written = aggregate(results_dir, papers=papers, report=self.report,
                                    sweep_dirs=[sweep_dir] if sweep_dir else [])
            except Exception:  # the records are safe on disk; say how to redo the merge
                log.exception("aggregating %s failed; the records are intact: rerun `bench report %s`",
                              results_dir, results_dir)
                continue
            log.info("merged results of the multirun: %s (tables/, plots/, report/index.html)", results_dir)
            print(Path(written["tables"]["md"]).read_text(encoding="utf-8"))  # the summary table itself
            for name in (k for k in written["tables"] if k.startswith("paper_")):  # paper vs ours, rank agreement
                print(f"{name}:\n" + Path(written["tables"][name]).read_text(encoding="utf-8"))
            print(f"tables: {written['tables']['md']}" + (f"\nreport: {written['report']}" if "report" in written else ""))
