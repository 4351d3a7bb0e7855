"""The edit stage: one job = (model, method + hparams, dataset[, shard k/K], seed).

For every item the runner computes an inversion key and an edit key (``bench.keys``).

It skips items whose record already exists with status "ok", reuses one inversion for every item
and edit point that shares it (in memory within a job, on disk across jobs; a cached inversion whose
tensors no longer match their recorded digest is recomputed), writes the edited PNG and then the
JSON record atomically (the record is the commit marker: no record → redo), records failures with
their error and goes on. A failure is keyed like a success (model, method + hparams, item, seed;
the edit key itself once the image is read), so sweep points never overwrite each other's failures
and a later success removes it. Nothing that does not change the output (paths, device name,
logger) enters a key. A job whose configuration is invalid fails alone inside a multirun: its error
goes into its summary.json and the other jobs run (docs/reliability.md).
"""

from __future__ import annotations

import logging
import os
import resource
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench import preflight, records
from bench.config import instantiate
from bench.data.base import Dataset
from bench.data.item import EditItem
from bench.data.preprocess import PREPROCESS_ID, load_image_tensor
from bench.env import environment
from bench.errors import USER_ERRORS
from bench.hashing import derive_seed
from bench.images import psnr, to_pil
from bench.io import atomic_path, clean_stale_tmp, write_json
from bench.job_checks import check_writable, load_checked_inversion, prompt_warnings, tensors_sha256
from bench.job_parts import dataset_from_config, method_from_config, select_shard
from bench.keys import early_failure_key, edit_key, inversion_key
from bench.models import EditPipeline, load_pipeline, scheduler_record
from methods.base import Inversion, Method

log = logging.getLogger(__name__)


class NonFiniteOutputError(RuntimeError):
    """A method produced NaN/inf (e.g. fp16 overflow)."""


@dataclass
class JobSummary:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    inversions_computed: int = 0
    inversions_loaded: int = 0
    nfe: int = 0
    nfe_backward: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    error: dict[str, str] | None = None  # the job could not start (invalid config); set in its summary.json

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------------
# building the job's pieces from the config


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


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process peak RSS (Linux: KiB)


class EditJob:
    """Runs one job's items; the pieces are injectable so tests can drive it without Hydra."""

    def __init__(self, *, pipe: EditPipeline, method: Method, method_label: str, scheduler_cfg: dict,
                 dataset: Dataset, items: list[EditItem], results_dir: str | Path, seed: int,
                 progress: bool = True, method_meta: dict[str, Any] | None = None):
        self.pipe, self.method, self.label = pipe, method, method_label
        self.method_meta = method_meta or {}  # preset + paper defaults (bench.presets.method_provenance)
        self.scheduler_cfg, self.dataset, self.items = scheduler_cfg, dataset, items
        self.results_dir, self.seed, self.progress = Path(results_dir), int(seed), progress
        self.summary = JobSummary()
        self.written: list[dict[str, Any]] = []  # this job's records (written, or found done): for loggers
        self.warnings: list[str] = []
        self._images: dict[str, tuple[torch.Tensor, str]] = {}
        self._inversions: dict[str, Inversion] = {}

    # -- helpers ---------------------------------------------------------------------------
    def _early_key(self, item: EditItem) -> str:
        return early_failure_key(self.pipe, self.method, self.dataset.name, item, self.seed)

    def _source(self, item: EditItem) -> tuple[torch.Tensor, str]:
        if item.image_path not in self._images:
            image, sha = load_image_tensor(item.image_path, self.pipe.resolution)
            source_png = records.source_image_path(self.results_dir, sha, self.pipe.resolution)
            if not source_png.exists():
                with atomic_path(source_png) as tmp:
                    to_pil(image).save(tmp, format="PNG")
            self._images[item.image_path] = (image, sha)
        return self._images[item.image_path]

    def _inversion(self, key: str, image: torch.Tensor, item: EditItem, image_sha: str) -> tuple[Inversion, dict]:
        """The inversion for ``key``: from memory, from disk, or computed (and saved).

        The returned cost always states the inversion's own cost (NFE, seconds, from its metadata) and
        whether this item reused it, so tables can report the algorithmic cost per item."""
        cached = True
        if key in self._inversions:
            inversion = self._inversions[key]
        else:
            path = records.inversion_path(self.results_dir, self.label, key)
            inversion = load_checked_inversion(path)
            if inversion is not None:
                inversion = inversion.to(self.pipe.device, self.pipe.dtype)
                self.summary.inversions_loaded += 1
            else:
                generator = torch.Generator("cpu").manual_seed(derive_seed(self.seed, "invert", image_sha,
                                                                           item.source_prompt))
                before, start = self.pipe.counter.snapshot(), time.perf_counter()
                inversion = self.method.invert(self.pipe, image.to(self.pipe.device, self.pipe.dtype),
                                               item.source_prompt, generator)
                spent = self.pipe.counter.since(before)
                check_finite(inversion.tensors.values(), f"inversion of {item.image_id!r}")
                inversion.meta.update({"nfe": spent["nfe"], "nfe_backward": spent["nfe_backward"],
                                       "seconds": time.perf_counter() - start,
                                       "tensors_sha256": tensors_sha256(inversion.tensors)})
                inversion.save(str(path))
                self.summary.inversions_computed += 1
                cached = False
            self._inversions = {key: inversion}  # one image at a time: items come grouped by image
        return inversion, {"inversion_cached": cached, "inversion_nfe": inversion.meta.get("nfe", 0),
                           "inversion_nfe_backward": inversion.meta.get("nfe_backward", 0),
                           "inversion_seconds": inversion.meta.get("seconds", 0.0)}

    def _base_record(self, item: EditItem, key: str | None) -> dict[str, Any]:
        return {
            "schema": records.RECORD_SCHEMA, "key": key,
            "method": {"label": self.label, "name": self.method.name, "version": self.method.version,
                       "hparams": self.method.hparams(), "stochastic": self.method.stochastic,
                       "scheduler": scheduler_record(self.pipe.scheduler), **self.method_meta},
            "dataset": self.dataset.describe(), "item": item.describe(), "seed": self.seed,
            "model": {**self.pipe.identity(), "device": str(self.pipe.device)},
            # CPU kernels sum in an order that depends on the thread count: outputs can differ in the last
            # bits between thread counts (not part of the key, like the device; recorded for audits)
            "runtime": {"num_threads": torch.get_num_threads(),
                        "deterministic": torch.are_deterministic_algorithms_enabled()},
            "env": environment(), "created_at": datetime.now(timezone.utc).isoformat(),
        }

    # -- one item --------------------------------------------------------------------------
    def run_item(self, item: EditItem) -> str:
        """Edit one item; returns "ok", "skipped" or "failed" (never raises for item-level errors)."""
        key = None
        self.warnings = []
        try:
            item.validate()
            self.warnings = prompt_warnings(self.pipe.tokenizer, item)
            image, image_sha = self._source(item)
            if float(image.amax() - image.amin()) == 0:  # scored like any edit, but never silently
                self.warnings.append("the source image is constant (one colour): metrics on it say little")
            inv_key = inversion_key(self.pipe, self.scheduler_cfg, self.method, image_sha, item.source_prompt,
                                    self.seed)
            key = edit_key(inv_key, self.method, self.dataset.name, item, self.seed)
            record_path = records.edit_record_path(self.results_dir, self.label, key)
            if record_path.is_file():
                existing = records.read_record(record_path)
                if existing.get("status") == "ok":
                    self.written.append(existing)
                    return "skipped"

            before, start = self.pipe.counter.snapshot(), time.perf_counter()
            if self.pipe.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.pipe.device)
            inversion, inversion_cost = self._inversion(inv_key, image, item, image_sha)
            edit_start = time.perf_counter()
            generator = torch.Generator("cpu").manual_seed(derive_seed(self.seed, "edit", key))
            edited = self.method.edit(self.pipe, inversion, item, generator)
            check_finite([edited], f"edit of {item.item_id!r}")
            edit_seconds = time.perf_counter() - edit_start
            reused = inversion_cost["inversion_cached"]
            spent = self.pipe.counter.since(before)

            png_path = records.edit_image_path(self.results_dir, self.label, key)
            with atomic_path(png_path) as tmp:
                to_pil(edited, truncate=True).save(tmp, format="PNG")  # as the references save edits
            for warning in self.warnings:
                log.warning("item %s: %s", item.item_id, warning)
            record = self._base_record(item, key)
            record.update({
                "status": "ok", "inversion_key": inv_key,
                # what the inversion reports about itself (NFE, seconds, optimisation iterations/losses, ...)
                "inversion": dict(inversion.meta),
                "item": {**record["item"], "image_sha256": image_sha, "preprocess": PREPROCESS_ID,
                         "resolution": self.pipe.resolution},
                "cost": {**spent, **inversion_cost, "edit_seconds": edit_seconds,
                         "seconds": time.perf_counter() - start,
                         "edit_nfe": spent["nfe"] - (0 if reused else inversion_cost["inversion_nfe"]),
                         "edit_nfe_backward": spent["nfe_backward"]
                         - (0 if reused else inversion_cost["inversion_nfe_backward"]),
                         "peak_memory_bytes": peak_memory_bytes(self.pipe.device)},
                "quick": {"psnr_vs_source": float(psnr(edited.cpu(), image[0]))}, "warnings": self.warnings,
                "files": {"edited": png_path.relative_to(self.results_dir).as_posix(),
                          "source": records.source_image_path(self.results_dir, image_sha, self.pipe.resolution)
                          .relative_to(self.results_dir).as_posix()},
            })
            write_json(record_path, record)
            self.written.append(record)
            # a success supersedes this item's failure recorded before its image could be read
            records.edit_record_path(self.results_dir, self.label, self._early_key(item)).unlink(missing_ok=True)
            self.summary.nfe += spent["nfe"]
            self.summary.nfe_backward += spent["nfe_backward"]
            return "ok"
        except Exception as err:  # an item-level failure is recorded; the sweep goes on
            record = self._base_record(item, key)
            record.update({"status": "failed", "warnings": self.warnings, "error": {
                "type": type(err).__name__, "message": str(err),
                "where": "".join(traceback.format_exception(err)[-3:])[-2000:]}})
            record["key"] = key or self._early_key(item)
            write_json(records.edit_record_path(self.results_dir, self.label, record["key"]), record)
            self.written.append(record)
            self.summary.failures.append({"item": item.item_id, "error": f"{type(err).__name__}: {err}"})
            log.warning("item %s failed: %s: %s", item.item_id, type(err).__name__, err)
            return "failed"

    def run(self) -> JobSummary:
        from tqdm.auto import tqdm

        clean_stale_tmp(self.results_dir)
        start = time.perf_counter()
        bar = tqdm(self.items, desc=f"{self.label} × {self.dataset.name}", unit="item", disable=not self.progress)
        for item in bar:
            outcome = self.run_item(item)
            setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
            bar.set_postfix(ok=self.summary.ok, skipped=self.summary.skipped, failed=self.summary.failed)
        self.summary.seconds = time.perf_counter() - start
        return self.summary


def check_finite(tensors, what: str) -> None:
    for tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteOutputError(f"{what} produced NaN/inf values (dtype {tensor.dtype})")


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
        from bench.tables import write_tables

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
                  progress=bool(cfg.runtime.progress), method_meta=method_provenance(cfg, method_label(cfg)))
    info = {"method": job.label, "dataset": dataset.name, "shard": shard, "num_shards": num_shards,
            "seed": cfg.seed, "items": len(items)}
    return job, metrics_cfg, info


def _hydra_output_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:
        return None
