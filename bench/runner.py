"""The edit stage: one job = (model, method + hparams, dataset[, shard k/K], seed).

``run_from_config`` checks that everything the job needs is on this machine (``preflight.check``,
which imports no torch, so a job that cannot start fails in about a second), then builds the job
(``bench.job_setup.prepare_job``: method hyperparameters, a writable results dir, the pipeline) and
runs it (``bench.edit_job.EditJob``: keys, caches, batched method calls, records), then the metric
stage, the summary, the tables and the logger. A job whose configuration is invalid fails alone
inside a multirun: its error goes into its summary.json and the other jobs run (docs/reliability.md).
This module imports nothing heavy; torch and the libraries come with bench.job_setup.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench import preflight
from bench.config import instantiate, job_choices
from bench.errors import user_errors
from bench.io import write_json
from bench.job_summary import JobSummary

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the job


def run_id() -> str:
    """Names this process's run dir uniquely: the ``bench`` command's id (EDITBENCH_RUN_ID, set by
    ``bench.cli``), else the pid, after a timestamp to the microsecond."""
    return f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S_%f')}_{os.environ.get('EDITBENCH_RUN_ID') or os.getpid()}"


def _in_multirun() -> bool:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no running Hydra app
        return False


def run_from_config(cfg: DictConfig) -> JobSummary:
    """Build the job from a composed config, run it, write the run summary (and tables).

    A configuration error (bad hyperparameter, unknown dataset, unwritable results dir, ...) is
    written to the job's summary.json; inside a multirun the job then returns and the others run,
    in a single run it is raised (the CLI prints it in one line)."""
    run_dir = Path(_hydra_output_dir() or Path(cfg.paths.results_dir) / "runs" / run_id())
    job_info: dict[str, Any] = {"method": OmegaConf.select(cfg, "method._target_"), "seed": cfg.seed}
    try:
        listing = preflight.check(cfg, job_choices(cfg))  # every missing file at once, before any heavy import
        from bench.job_setup import prepare_job

        job, metrics_cfg, job_info = prepare_job(cfg, listing)
    except user_errors() as err:
        summary = JobSummary(error={"type": type(err).__name__, "message": str(err)})
        try:
            write_json(run_dir / "summary.json", {"job": job_info, **summary.as_dict()})
        except OSError as write_err:  # e.g. the results dir itself is what is not writable
            log.warning("cannot write %s: %s", run_dir / "summary.json", write_err)
        if not _in_multirun():
            raise
        log.error("job failed before it started (the other jobs run): %s", err)
        return summary
    results_dir = job.results_dir
    summary = job.run()
    if metrics_cfg.get("ids"):  # the metric stage: scores this job's records not yet scored
        from bench.metric_stage import score_results

        score_results(results_dir, metrics_cfg, pipe=job.pipe, methods=[job.label])
    write_json(run_dir / "summary.json", {"job": job_info, **summary.as_dict()})
    if cfg.get("tables", True):
        from bench.table_files import write_tables

        write_tables(results_dir)
    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True) if cfg.get("logger") else {}
    if logger_cfg.get("_target_"):  # e.g. conf/logger/wandb.yaml: mirror what this job wrote
        instantiate(logger_cfg, what="logger").log_job(config=cfg, label=job.label, results_dir=results_dir,
                                                       summary=summary, records=job.written)
    return summary


def _hydra_output_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:
        return None
