"""Building a job once its preflight passed (bench/runner.py): the method and its hyperparameters, the
metric configs, a writable results dir, then the pipeline. This is where torch, diffusers and the
method modules are first imported."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bench import quiet
from bench.config import job_choices
from bench.edit_job import EditJob
from bench.job_checks import check_writable
from bench.job_parts import method_from_config, select_shard
from bench.models import load_pipeline
from bench.preflight import DatasetListing


def method_label(cfg: DictConfig) -> str:
    """The method's config name (a preset like `ddim_ef` is its own label), else the class name."""
    return str(job_choices(cfg).get("method") or OmegaConf.select(cfg, "method._target_").rsplit(".", 1)[-1].lower())


def configure_runtime(runtime: DictConfig | dict) -> None:
    import torch

    if runtime.get("num_threads"):
        torch.set_num_threads(int(runtime["num_threads"]))
    if runtime.get("deterministic", True):
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def prepare_job(cfg: DictConfig, listing: DatasetListing) -> tuple[EditJob, dict[str, Any], dict[str, Any]]:
    """Everything a job needs, checked before any editing work: (job, metrics config, summary info).
    ``listing``: the dataset as ``preflight.check`` listed it (read once)."""
    configure_runtime(cfg.runtime)
    quiet.silence_progress_bars()  # diffusers' and transformers' (imported here anyway)
    results_dir = Path(cfg.paths.results_dir)
    method, scheduler_cfg = method_from_config(cfg.method)
    items = select_shard(listing.items, listing.shard, listing.num_shards)
    if cfg.get("limit"):
        items = items[: int(cfg.limit)]
    metrics_cfg = OmegaConf.to_container(cfg.metrics, resolve=True)
    if metrics_cfg.get("ids"):  # a bad metric setting fails now, not after the edits (weights: the preflight)
        from bench.metrics.registry import build_metrics

        build_metrics(metrics_cfg)
    check_writable(results_dir)
    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), scheduler_cfg,
                         device=cfg.runtime.device, dtype=cfg.runtime.dtype)
    from bench.presets import method_provenance

    label = method_label(cfg)
    job = EditJob(pipe=pipe, method=method, method_label=label, scheduler_cfg=scheduler_cfg,
                  dataset=listing.dataset, items=items, results_dir=results_dir, seed=cfg.seed,
                  progress=bool(cfg.runtime.progress), method_meta=method_provenance(cfg, label),
                  batch_size=int(cfg.runtime.get("batch_size") or 1))
    info = {"method": job.label, "dataset": listing.dataset.name, "shard": listing.shard,
            "num_shards": listing.num_shards, "seed": cfg.seed, "items": len(items)}
    return job, metrics_cfg, info
