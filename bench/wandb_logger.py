"""Weights & Biases mirror of one job's results (``logger=wandb``; conf/logger/wandb.yaml).

``log_results(cfg, results_dir, summary)`` is called by ``bench.runner.run_from_config`` after the job
(edits, metrics, tables). It logs, in one W&B run per job:

- the resolved config (a plain dict: W&B cannot take a DictConfig; also as editbench_config.yaml);
- ``edits``: a ``wandb.Table`` with one row per edit record of this job (item, prompts, point, seed,
  status, source and edited images for the first ``max_images`` rows, every metric value), and
  those edited images as an ``edited_images`` media panel;
- summary metrics: the job's counts and cost, and the mean of every metric over its ok items;
- the results dir's ``tables/`` as an ``eval_results`` artifact.

It works with ``WANDB_MODE=offline`` (files under ``<logger.dir>/wandb/offline-run-*``; upload later
with ``wandb sync``) and ``disabled``. The run is always finished: on an error during logging it is
finished with a non-zero exit code and the error is raised (the records on disk are untouched).
With ``logger.name`` other than ``wandb`` nothing is imported and nothing happens.
"""

from __future__ import annotations

import json
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


def enabled(cfg: DictConfig) -> bool:
    return OmegaConf.select(cfg, "logger.name", default="none") == "wandb"


def job_records(cfg: DictConfig, results_dir: Path) -> pd.DataFrame:
    """This job's edit records: same method label, hyperparameters, dataset and seed (all shards of the
    same job share them; the shard's items are selected by item id when the dataset is sharded)."""
    from bench.runner import dataset_from_config, method_from_config, method_label, select_shard
    from bench.tables import load_edits

    edits = load_edits(results_dir)
    if edits.empty:
        return edits
    method, _ = method_from_config(cfg.method)
    dataset, shard, num_shards = dataset_from_config(cfg.dataset)
    hparams = json.dumps(method.hparams(), sort_keys=True, default=str)
    mine = edits[(edits["method"] == method_label(cfg)) & (edits["dataset"] == dataset.name)
                 & (edits["seed"] == int(cfg.seed))]
    mine = mine[[json.dumps(json.loads(h), sort_keys=True, default=str) == hparams for h in mine["hparams"]]]
    if num_shards > 1 or cfg.get("limit"):
        try:
            items = select_shard(dataset.items(), shard, num_shards)
            if cfg.get("limit"):
                items = items[: int(cfg.limit)]
            mine = mine[mine["item_id"].isin({item.item_id for item in items})]
        except Exception as err:  # listing the dataset failed: log every record of the job's point
            log.warning("W&B: cannot list the shard's items (%s); logging all records of this point", err)
    return mine


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


def log_results(cfg: DictConfig, results_dir: str | Path, summary: Any) -> str | None:
    """Mirror one finished job to W&B (no-op unless ``logger.name == "wandb"``); returns the run dir
    (None when disabled). ``summary``: the runner's JobSummary (or a dict)."""
    if not enabled(cfg):
        return None
    import wandb

    from bench.runner import method_label

    results_dir = Path(results_dir)
    logger = OmegaConf.to_container(cfg.logger, resolve=True)
    config = resolved_config(cfg)
    label = method_label(cfg)
    job = summary.as_dict() if hasattr(summary, "as_dict") else dict(summary or {})
    run_dir = Path(logger.get("dir") or results_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=logger.get("project") or "editbench", entity=logger.get("entity"),
                     group=logger.get("group"), job_type=label, tags=list(logger.get("tags") or []),
                     dir=str(run_dir), config=config, mode=logger.get("mode") or None, reinit="finish_previous")
    exit_code = 1
    try:
        records = job_records(cfg, results_dir)
        # the resolved config also as a file of the run (W&B's Files tab; readable in offline run dirs)
        if getattr(run, "dir", None) and not run.disabled:
            (Path(run.dir) / "editbench_config.yaml").write_text(OmegaConf.to_yaml(config), encoding="utf-8")
        if not records.empty:
            max_images = int(logger.get("max_images", 64))
            table, means = build_table(records, results_dir, max_images)
            ok = records[(records["status"] == "ok") & records["edited"].notna()].head(max_images)
            images = [wandb.Image(str(results_dir / r["edited"]), caption=f"{r['item_id']}: {r['target_prompt']}")
                      for _, r in ok.iterrows()]
            run.log({"edits": table, **({"edited_images": images} if images else {})})
            run.summary.update(means)
        run.summary.update({f"job/{k}": v for k, v in job.items() if isinstance(v, (int, float))})
        run.summary["job/items_logged"] = len(records)
        if logger.get("log_tables", True) and (results_dir / "tables").is_dir():
            artifact = wandb.Artifact(_artifact_name(f"tables-{cfg.get('run_name', 'results')}"), type="eval_results",
                                      description=f"tables of {results_dir}")
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
