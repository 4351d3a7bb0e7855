"""Weights & Biases mirror of one job's results (``logger=wandb``; conf/logger/wandb.yaml).

A logger is a ``_target_`` object (like Hydra's callbacks): ``bench.runner.run_from_config``
instantiates ``cfg.logger`` after the job (edits, metrics, tables) and calls
``log_job(config, label, results_dir, summary, records)`` with what the job wrote (its summary and
its edit records, done earlier or now); the logger never calls back into the runner nor re-lists the
dataset. It logs, in one W&B run per job:

- the resolved config (a plain dict: W&B cannot take a DictConfig; also as editbench_config.yaml);
- ``edits``: a ``wandb.Table`` with one row per edit record of this job (item, prompts, point, seed,
  status, source and edited images for the first ``max_images`` rows, every metric value), and
  those edited images as an ``edited_images`` media panel;
- summary metrics: the job's counts and cost, and the mean of every metric over its ok items;
- the results dir's ``tables/`` as an ``eval_results`` artifact.

It works with ``WANDB_MODE=offline`` (files under ``<dir>/wandb/offline-run-*``; upload later with
``wandb sync``) and ``disabled``. The run is always finished: on an error during logging it is
finished with a non-zero exit code and the error is raised (the records on disk are untouched).
With ``logger=none`` (no ``_target_``) nothing is imported and nothing happens.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


class WandbLoggingError(RuntimeError):
    """Logging to W&B failed (the job's results on disk are complete)."""


def _metric_wide(results_dir: Path, keys: list[str]) -> pd.DataFrame:
    from bench.tables import load_metrics

    metrics = load_metrics(results_dir)
    metrics = metrics[metrics["edit_key"].isin(keys)]
    if metrics.empty:
        return pd.DataFrame(index=pd.Index([], name="edit_key"))
    metrics = metrics.assign(value=pd.to_numeric(metrics["value"], errors="coerce") * metrics["display_scale"])
    return metrics.pivot_table(index="edit_key", columns="metric_id", values="value", aggfunc="first", dropna=False)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def build_table(records: pd.DataFrame, results_dir: Path, max_images: int):
    """The per-item ``wandb.Table`` (and the metric means for the summary)."""
    import wandb

    wide = _metric_wide(results_dir, list(records["key"]))
    metric_ids = sorted(wide.columns) if not wide.empty else []
    columns = ["item_id", "dataset", "method", "point", "seed", "status", "source_prompt", "target_prompt",
               "source", "edited", "psnr_vs_source", *metric_ids, "error"]
    table = wandb.Table(columns=columns)
    for n, (_, rec) in enumerate(records.iterrows()):
        with_images = rec["status"] == "ok" and n < max_images
        source = wandb.Image(str(results_dir / rec["source"])) if with_images and rec["source"] else None
        edited = wandb.Image(str(results_dir / rec["edited"]),
                             caption=f"{rec['method']} ({rec['point']}): {rec['target_prompt']}") \
            if with_images and rec["edited"] else None
        values = [_clean(float(wide.at[rec["key"], m])) if rec["key"] in wide.index else None for m in metric_ids]
        table.add_data(rec["item_id"], rec["dataset"], rec["method"], rec["point"], int(rec["seed"]), rec["status"],
                       rec["source_prompt"], rec["target_prompt"], source, edited,
                       _clean(float(rec["psnr_vs_source"])), *values, rec["error"])
    means = {f"metrics/{m}": _clean(float(wide[m].mean())) for m in metric_ids}
    ok = records[records["status"] == "ok"]
    if not ok.empty:
        means["metrics/psnr_vs_source"] = _clean(float(ok["psnr_vs_source"].mean()))
    return table, means


def resolved_config(cfg: DictConfig) -> dict[str, Any]:
    """The job config as a plain resolved dict, without Hydra's own node (W&B cannot take a DictConfig)."""
    from omegaconf import open_dict

    plain = cfg.copy()
    with open_dict(plain):
        plain.pop("hydra", None)
    try:
        return OmegaConf.to_container(plain, resolve=True, throw_on_missing=False)
    except Exception as err:  # an interpolation that only resolves inside a running Hydra app
        log.warning("W&B: logging the config unresolved (%s)", err)
        return OmegaConf.to_container(plain, resolve=False)


def _artifact_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:120] or "results"


class WandbLogger:
    """``log_job`` mirrors one finished job to W&B (see the module docstring)."""

    def __init__(self, project: str = "editbench", entity: str | None = None, group: str | None = None,
                 tags: list[str] | None = None, mode: str | None = None, dir: str | None = None,
                 max_images: int = 64, log_tables: bool = True):
        self.project, self.entity, self.group, self.tags = project or "editbench", entity, group, list(tags or [])
        self.mode, self.dir, self.max_images, self.log_tables = mode or None, dir, int(max_images), bool(log_tables)

    def log_job(self, config: DictConfig, label: str, results_dir: str | Path, summary: Any,
                records: list[dict[str, Any]]) -> str | None:
        """Log the job's ``records`` (edit record dicts) and ``summary`` (JobSummary or dict); returns the
        run's sync dir."""
        import wandb

        from bench.tables import edits_frame

        results_dir = Path(results_dir)
        resolved = resolved_config(config)
        job = summary.as_dict() if hasattr(summary, "as_dict") else dict(summary or {})
        run_dir = Path(self.dir or results_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        run = wandb.init(project=self.project, entity=self.entity, group=self.group, job_type=label, tags=self.tags,
                         dir=str(run_dir), config=resolved, mode=self.mode, reinit="finish_previous")
        exit_code = 1
        try:
            frame = edits_frame(records)
            # the resolved config also as a file of the run (W&B's Files tab; readable in offline run dirs)
            if getattr(run, "dir", None) and not run.disabled:
                (Path(run.dir) / "editbench_config.yaml").write_text(OmegaConf.to_yaml(resolved), encoding="utf-8")
            if not frame.empty:
                table, means = build_table(frame, results_dir, self.max_images)
                ok = frame[(frame["status"] == "ok") & frame["edited"].notna()].head(self.max_images)
                images = [wandb.Image(str(results_dir / r["edited"]), caption=f"{r['item_id']}: {r['target_prompt']}")
                          for _, r in ok.iterrows()]
                run.log({"edits": table, **({"edited_images": images} if images else {})})
                run.summary.update(means)
            run.summary.update({f"job/{k}": v for k, v in job.items() if isinstance(v, (int, float))})
            run.summary["job/items_logged"] = len(frame)
            if self.log_tables and (results_dir / "tables").is_dir():
                artifact = wandb.Artifact(_artifact_name(f"tables-{resolved.get('run_name', 'results')}"),
                                          type="eval_results", description=f"tables of {results_dir}")
                for path in sorted((results_dir / "tables").iterdir()):
                    if path.is_file() and ".tmp-" not in path.name:
                        artifact.add_file(str(path), name=path.name)
                run.log_artifact(artifact)
            exit_code = 0
        except Exception as err:
            raise WandbLoggingError(f"W&B logging of {results_dir} failed ({type(err).__name__}: {err}); the "
                                    "results on disk are complete, rerun with logger=wandb to log them again") from err
        finally:
            run.finish(exit_code=exit_code)
        return getattr(run.settings, "sync_dir", None)
