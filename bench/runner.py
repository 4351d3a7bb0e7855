"""The edit stage: one job = (model, method + hparams, dataset[, shard k/K], seed).

For every item the runner computes two content keys (``bench.hashing``):

- inversion key: model identity, scheduler config, method name/version/*inversion* hparams, image
  sha256, source prompt, preprocessing, resolution (+ seed for stochastic methods);
- edit key: the inversion key + all hparams + the item identity (dataset, item id, prompts, blend
  words, extra) + seed.

It skips items whose record already exists with status "ok", reuses one inversion for every item
and edit point that shares it (in memory within a job, on disk across jobs), writes the edited PNG
and then the JSON record atomically (the record is the commit marker: no record → redo), records
failures with their error and goes on. Nothing that does not change the output (paths, device
name, logger) enters a key.
"""

from __future__ import annotations

import logging
import math
import resource
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench import records
from bench.config import instantiate
from bench.data.base import Dataset
from bench.data.item import EditItem
from bench.data.preprocess import PREPROCESS_ID, load_image_tensor, to_pil
from bench.env import environment
from bench.hashing import content_key, derive_seed
from bench.io import atomic_path, clean_stale_tmp, write_json
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

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# ----------------------------------------------------------------------------------------------
# building the job's pieces from the config


def method_from_config(method_cfg: DictConfig | dict) -> tuple[Method, dict[str, Any]]:
    """Instantiate the method (its config minus the scheduler) → (method, scheduler config)."""
    plain = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    scheduler_cfg = plain.pop("scheduler", None)
    if scheduler_cfg is None:
        raise ValueError(f"method config {plain.get('_target_')!r} has no 'scheduler' entry; every method names "
                         "its DDIM scheduler config (see conf/scheduler/)")
    return instantiate(plain, what="method"), scheduler_cfg


def dataset_from_config(dataset_cfg: DictConfig | dict) -> tuple[Dataset, int, int]:
    plain = OmegaConf.to_container(dataset_cfg, resolve=True) if isinstance(dataset_cfg, DictConfig) else dict(dataset_cfg)
    shard, num_shards = int(plain.pop("shard", 0)), int(plain.pop("num_shards", 1))
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"dataset.shard={shard} dataset.num_shards={num_shards}: expected 0 <= shard < num_shards")
    return instantiate(plain, what="dataset"), shard, num_shards


def select_shard(items: list[EditItem], shard: int, num_shards: int) -> list[EditItem]:
    """Round-robin over image groups (sorted by image id) so each image's items stay in one shard."""
    groups: OrderedDict[str, list[EditItem]] = OrderedDict()
    for item in items:
        groups.setdefault(item.image_id, []).append(item)
    chosen = [g for i, g in enumerate(sorted(groups)) if i % num_shards == shard]
    return [item for g in chosen for item in groups[g]]


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
# keys


def inversion_key(pipe: EditPipeline, scheduler_cfg: dict, method: Method, image_sha: str, source_prompt: str,
                  seed: int) -> str:
    return content_key({
        "kind": "inversion", "model": pipe.identity(), "scheduler": scheduler_cfg,
        "method": {"name": method.name, "version": method.version, "hparams": method.inversion_hparams()},
        "image_sha256": image_sha, "source_prompt": source_prompt, "preprocess": PREPROCESS_ID,
        "resolution": pipe.resolution, "seed": seed if method.stochastic else None,
    })


def edit_key(inv_key: str, method: Method, dataset_name: str, item: EditItem, seed: int) -> str:
    identity = item.describe()
    for path_field in ("image_path", "mask_path", "target_image_path"):  # paths never enter a key
        identity.pop(path_field)
    return content_key({
        "kind": "edit", "inversion_key": inv_key,
        "method": {"name": method.name, "version": method.version, "hparams": method.hparams()},
        "dataset": dataset_name, "item": identity, "seed": seed,
    })


# ----------------------------------------------------------------------------------------------
# the job


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB between two [-1,1] images (peak-to-peak range 2)."""
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


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
        self._images: dict[str, tuple[torch.Tensor, str]] = {}
        self._inversions: dict[str, Inversion] = {}

    # -- helpers ---------------------------------------------------------------------------
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
            if path.is_file():
                inversion = Inversion.load(str(path)).to(self.pipe.device, self.pipe.dtype)
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
                                       "seconds": time.perf_counter() - start})
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
        try:
            item.validate()
            image, image_sha = self._source(item)
            inv_key = inversion_key(self.pipe, self.scheduler_cfg, self.method, image_sha, item.source_prompt,
                                    self.seed)
            key = edit_key(inv_key, self.method, self.dataset.name, item, self.seed)
            record_path = records.edit_record_path(self.results_dir, self.label, key)
            if record_path.is_file() and records.read_record(record_path).get("status") == "ok":
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
                to_pil(edited).save(tmp, format="PNG")
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
                "quick": {"psnr_vs_source": psnr(edited.cpu(), image[0])},
                "files": {"edited": png_path.relative_to(self.results_dir).as_posix(),
                          "source": records.source_image_path(self.results_dir, image_sha, self.pipe.resolution)
                          .relative_to(self.results_dir).as_posix()},
            })
            write_json(record_path, record)
            self.summary.nfe += spent["nfe"]
            self.summary.nfe_backward += spent["nfe_backward"]
            return "ok"
        except Exception as err:  # an item-level failure is recorded; the sweep goes on
            record = self._base_record(item, key)
            record.update({"status": "failed", "error": {
                "type": type(err).__name__, "message": str(err),
                "where": "".join(traceback.format_exception(err)[-3:])[-2000:]}})
            failed_key = key or content_key({"failed_item": item.item_id, "dataset": self.dataset.name,
                                             "method": self.label, "seed": self.seed})
            record["key"] = failed_key
            write_json(records.edit_record_path(self.results_dir, self.label, failed_key), record)
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


def run_from_config(cfg: DictConfig) -> JobSummary:
    """Build the job from a composed config, run it, write the run summary (and tables)."""
    configure_runtime(cfg.runtime)
    results_dir = Path(cfg.paths.results_dir)
    method, scheduler_cfg = method_from_config(cfg.method)
    dataset, shard, num_shards = dataset_from_config(cfg.dataset)
    items = select_shard(dataset.items(), shard, num_shards)
    if cfg.get("limit"):
        items = items[: int(cfg.limit)]
    metrics_cfg = OmegaConf.to_container(cfg.metrics, resolve=True)
    if metrics_cfg.get("ids"):  # fail fast, before any editing work, when a metric backbone is missing
        from bench.metric_stage import check_backbones

        check_backbones(metrics_cfg)

    pipe = load_pipeline(OmegaConf.to_container(cfg.model, resolve=True), scheduler_cfg,
                         device=cfg.runtime.device, dtype=cfg.runtime.dtype)
    from bench.presets import method_provenance

    job = EditJob(pipe=pipe, method=method, method_label=method_label(cfg), scheduler_cfg=scheduler_cfg,
                  dataset=dataset, items=items, results_dir=results_dir, seed=cfg.seed,
                  progress=bool(cfg.runtime.progress), method_meta=method_provenance(cfg, method_label(cfg)))
    summary = job.run()
    if metrics_cfg.get("ids"):  # the metric stage: scores this job's records not yet scored
        from bench.metric_stage import score_results

        score_results(results_dir, metrics_cfg, pipe=pipe, methods=[job.label])
    run_dir = _hydra_output_dir() or results_dir / "runs" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    write_json(Path(run_dir) / "summary.json", {"job": {"method": job.label, "dataset": dataset.name,
                                                         "shard": shard, "num_shards": num_shards,
                                                         "seed": cfg.seed, "items": len(items)},
                                                 **summary.as_dict()})
    if cfg.get("tables", True):
        from bench.tables import write_tables

        write_tables(results_dir)
    # --- logger hook (issue 7): mirror the finished job to W&B; a no-op unless logger=wandb ---
    from bench.wandb_logger import log_results

    log_results(cfg, results_dir, summary)
    # --- end logger hook ---
    return summary


def _hydra_output_dir() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except ValueError:
        return None
