"""The edit stage: one job = (model, method + hparams, dataset[, shard k/K], seed).

``run_from_config`` builds the job from a composed config (``prepare_job``: every check first — method
hyperparameters, the preflight of weights and data, a writable results dir — then the pipeline) and
runs it (``bench.edit_job.EditJob``: keys, caches, batched method calls, records), then the metric
stage, the summary, the tables and the logger. A job whose configuration is invalid fails alone
inside a multirun: its error goes into its summary.json and the other jobs run (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench import preflight
from bench.config import instantiate
from bench.edit_job import EditJob, JobSummary
from bench.errors import USER_ERRORS
from bench.io import write_json
from bench.job_checks import check_writable
from bench.job_parts import dataset_from_config, method_from_config, select_shard
from bench.models import load_pipeline

log = logging.getLogger(__name__)


def job_choices(cfg: DictConfig) -> dict[str, str]:
    """The job's config group choices (model, metrics, ...): from the running Hydra app, else from the config."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except ValueError:  # composed without a running Hydra app (tests, API use)
        return dict(OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {})


def method_label(cfg: DictConfig) -> str:
    """The method's config name (a preset like `ddim_ef` is its own label), else the class name."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.choices["method"]
    except (ValueError, KeyError, AttributeError):  # composed without a running Hydra app (tests, API use)
        return str(OmegaConf.select(cfg, "hydra.runtime.choices.method", default=None)
                   or OmegaConf.select(cfg, "method._target_").rsplit(".", 1)[-1].lower())


def configure_runtime(runtime: DictConfig | dict) -> None:
    if runtime.get("num_threads"):
        torch.set_num_threads(int(runtime["num_threads"]))
    if runtime.get("deterministic", True):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


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
        job, metrics_cfg, job_info = prepare_job(cfg)
    except USER_ERRORS as err:
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


def prepare_job(cfg: DictConfig) -> tuple[EditJob, dict[str, Any], dict[str, Any]]:
    """Everything a job needs, checked before any editing work: (job, metrics config, summary info)."""
    configure_runtime(cfg.runtime)
    results_dir = Path(cfg.paths.results_dir)
    method, scheduler_cfg = method_from_config(cfg.method)  # an invalid hyperparameter is reported first
    preflight.check(cfg, job_choices(cfg), method.uses_image_encoder)  # every missing file at once, before loading
    dataset, shard, num_shards = dataset_from_config(cfg.dataset)
    items = select_shard(dataset.items(), shard, num_shards)
    if cfg.get("limit"):
        items = items[: int(cfg.limit)]
    metrics_cfg = OmegaConf.to_container(cfg.metrics, resolve=True)
    if metrics_cfg.get("ids"):  # fail fast, before any editing work, when a metric backbone is missing
        from bench.metric_stage import check_backbones

        check_backbones(metrics_cfg)
    check_writable(results_dir)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), scheduler_cfg,
                         device=cfg.runtime.device, dtype=cfg.runtime.dtype)
    from bench.presets import method_provenance

    job = EditJob(pipe=pipe, method=method, method_label=method_label(cfg), scheduler_cfg=scheduler_cfg,
                  dataset=dataset, items=items, results_dir=results_dir, seed=cfg.seed,
                  progress=bool(cfg.runtime.progress), method_meta=method_provenance(cfg, method_label(cfg)),
                  batch_size=int(cfg.runtime.get("batch_size") or 1))
    info = {"method": job.label, "dataset": dataset.name, "shard": shard, "num_shards": num_shards,
            "seed": cfg.seed, "items": len(items)}
    return job, metrics_cfg, info


def _hydra_output_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:
        return None
