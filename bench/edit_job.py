"""One job's items, B at a time (``runtime.batch_size``): keys, caches, batched method calls, records.

For every item the job computes an inversion key and an edit key (``bench.keys``). It skips items whose
record already exists with status "ok", reuses one inversion for every item and edit point that shares
it (in memory within a batch, on disk across jobs; a cached inversion whose tensors no longer match
their recorded digest is recomputed), writes the edited PNG and then the JSON record atomically (the
record is the commit marker: no record → redo), records failures with their error and goes on.

Item batching: the pending items of a batch are inverted together (``Method.invert_batch``: the missing
inversions only) and edited together (``Method.edit_batch``), so each UNet call carries every item's
rows. Keys do not contain B, and a method's batch forms draw each item's randomness from that item's
own generator, so an item's image does not depend on B beyond float rounding (tests/test_batching.py
states the tolerance). A batch that raises is retried item by item, so only the failing item is
recorded as failed. The cost of a batch (NFE, seconds) is shared equally by its items; each record
says how many items shared it (``cost.batch_items``).
"""

from __future__ import annotations

import logging
import resource
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from bench import records
from bench.data.base import Dataset
from bench.data.item import EditItem
from bench.data.preprocess import PREPROCESS_ID, load_image_tensor
from bench.env import environment
from bench.hashing import derive_seed
from bench.images import psnr, to_pil
from bench.io import atomic_path, clean_stale_tmp, write_json
from bench.job_checks import load_checked_inversion, prompt_warnings, tensors_sha256
from bench.job_summary import JobSummary
from bench.keys import early_failure_key, edit_key, inversion_key
from bench.models import EditPipeline, scheduler_record
from methods.base import Inversion, Method

log = logging.getLogger(__name__)


class NonFiniteOutputError(RuntimeError):
    """A method produced NaN/inf (e.g. fp16 overflow)."""


@dataclass
class Pending:
    """An item whose edit must be computed: its keys, source tensor and warnings."""

    item: EditItem
    key: str
    inv_key: str
    image: torch.Tensor
    image_sha: str
    warnings: list[str]


def peak_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # process peak RSS (Linux: KiB)


def check_finite(tensors, what: str) -> None:
    for tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise NonFiniteOutputError(f"{what} produced NaN/inf values (dtype {tensor.dtype})")


def shared(value: float, items: int) -> float:
    """One item's share of a batch's cost."""
    return value / items


class EditJob:
    """Runs one job's items; the pieces are injectable so tests can drive it without Hydra."""

    def __init__(self, *, pipe: EditPipeline, method: Method, method_label: str, scheduler_cfg: dict,
                 dataset: Dataset, items: list[EditItem], results_dir: str | Path, seed: int,
                 progress: bool = True, method_meta: dict[str, Any] | None = None, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"runtime.batch_size={batch_size}: expected a positive number of items per batch")
        self.pipe, self.method, self.label = pipe, method, method_label
        self.method_meta = method_meta or {}  # preset + paper defaults (bench.presets.method_provenance)
        self.scheduler_cfg, self.dataset, self.items = scheduler_cfg, dataset, items
        self.results_dir, self.seed, self.progress = Path(results_dir), int(seed), progress
        self.batch_size = batch_size
        self.summary = JobSummary()
        self.written: list[dict[str, Any]] = []  # this job's records (written, or found done): for loggers
        self._images: dict[str, tuple[torch.Tensor, str]] = {}

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
            self._images = {item.image_path: (image, sha)}  # items come grouped by image
        return self._images[item.image_path]

    def _base_record(self, item: EditItem, key: str | None) -> dict[str, Any]:
        return {
            "schema": records.RECORD_SCHEMA, "key": key,
            "method": {"label": self.label, "name": self.method.name, "version": self.method.version,
                       "hparams": self.method.hparams(), "stochastic": self.method.stochastic,
                       "scheduler": scheduler_record(self.pipe.scheduler), **self.method_meta},
            "dataset": self.dataset.describe(), "item": item.describe(), "seed": self.seed,
            "model": {**self.pipe.identity(), "device": str(self.pipe.device)},
            # CPU kernels sum in an order that depends on the thread count (and the batch size): outputs can
            # differ in the last bits between them (not part of the key, like the device; recorded for audits)
            "runtime": {"num_threads": torch.get_num_threads(),
                        "deterministic": torch.are_deterministic_algorithms_enabled(),
                        "batch_size": self.batch_size},
            "env": environment(), "created_at": datetime.now(timezone.utc).isoformat(),
        }

    def _fail(self, item: EditItem, key: str | None, warnings: list[str], err: Exception) -> str:
        record = self._base_record(item, key)
        record.update({"status": "failed", "warnings": warnings, "error": {
            "type": type(err).__name__, "message": str(err),
            "where": "".join(traceback.format_exception(err)[-3:])[-2000:]}})
        record["key"] = key or self._early_key(item)
        write_json(records.edit_record_path(self.results_dir, self.label, record["key"]), record)
        self.written.append(record)
        self.summary.failures.append({"item": item.item_id, "error": f"{type(err).__name__}: {err}"})
        log.warning("item %s failed: %s: %s", item.item_id, type(err).__name__, err)
        return "failed"

    # -- stage 1: keys, skip what is done --------------------------------------------------
    def _prepare(self, item: EditItem) -> Pending | str:
        """The item's keys and source, or its outcome ("skipped"/"failed") when there is nothing to compute."""
        key, warnings = None, []
        try:
            item.validate()
            warnings = prompt_warnings(self.pipe.tokenizer, item)
            image, image_sha = self._source(item)
            if float(image.amax() - image.amin()) == 0:  # scored like any edit, but never silently
                warnings.append("the source image is constant (one colour): metrics on it say little")
            inv_key = inversion_key(self.pipe, self.scheduler_cfg, self.method, image_sha, item.source_prompt,
                                    self.seed)
            key = edit_key(inv_key, self.method, self.dataset.name, item, self.seed)
            record_path = records.edit_record_path(self.results_dir, self.label, key)
            if record_path.is_file():
                existing = records.read_record(record_path)
                if existing.get("status") == "ok":
                    self.written.append(existing)
                    return "skipped"
            return Pending(item, key, inv_key, image, image_sha, warnings)
        except Exception as err:  # an item-level failure is recorded; the sweep goes on
            return self._fail(item, key, warnings, err)

    # -- stage 2: inversions ---------------------------------------------------------------
    def _inversions(self, pending: list[Pending]) -> tuple[list[Inversion], list[dict[str, Any]]]:
        """Each pending item's inversion: loaded from disk, or computed — all missing ones in one
        ``invert_batch`` — and saved. Also each item's inversion cost (its share of the batch)."""
        found: dict[str, Inversion] = {}
        computed: dict[str, Pending] = {}
        for p in pending:
            if p.inv_key in found or p.inv_key in computed:
                continue
            inversion = load_checked_inversion(records.inversion_path(self.results_dir, self.label, p.inv_key))
            if inversion is not None:
                found[p.inv_key] = inversion.to(self.pipe.device, self.pipe.dtype)
                self.summary.inversions_loaded += 1
            else:
                computed[p.inv_key] = p
        if computed:
            todo = list(computed.values())
            generators = [torch.Generator("cpu").manual_seed(derive_seed(self.seed, "invert", p.image_sha,
                                                                         p.item.source_prompt)) for p in todo]
            images = torch.cat([p.image for p in todo]).to(self.pipe.device, self.pipe.dtype)
            before, start = self.pipe.counter.snapshot(), time.perf_counter()
            inversions = self.method.invert_batch(self.pipe, images, [p.item.source_prompt for p in todo], generators)
            spent, seconds = self.pipe.counter.since(before), time.perf_counter() - start
            self.summary.nfe += spent["nfe"]
            self.summary.nfe_backward += spent["nfe_backward"]
            for p, inversion in zip(todo, inversions):
                check_finite(inversion.tensors.values(), f"inversion of {p.item.image_id!r}")
                inversion.meta.update({"nfe": shared(spent["nfe"], len(todo)),
                                       "nfe_backward": shared(spent["nfe_backward"], len(todo)),
                                       "seconds": shared(seconds, len(todo)), "batch_items": len(todo),
                                       "tensors_sha256": tensors_sha256(inversion.tensors)})
                inversion.save(str(records.inversion_path(self.results_dir, self.label, p.inv_key)))
                found[p.inv_key] = inversion
                self.summary.inversions_computed += 1
        inversions, costs, charged = [], [], set()
        for p in pending:
            inversion = found[p.inv_key]
            fresh = p.inv_key in computed and p.inv_key not in charged  # its first user pays for it
            charged.add(p.inv_key)
            inversions.append(inversion)
            costs.append({"inversion_cached": not fresh, "inversion_nfe": inversion.meta.get("nfe", 0),
                          "inversion_nfe_backward": inversion.meta.get("nfe_backward", 0),
                          "inversion_seconds": inversion.meta.get("seconds", 0.0)})
        return inversions, costs

    # -- stage 3: the edits ----------------------------------------------------------------
    def _edit(self, pending: list[Pending]) -> None:
        """Invert (what is missing) and edit the pending items together; write their records."""
        start = time.perf_counter()
        if self.pipe.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.pipe.device)
        inversions, inversion_costs = self._inversions(pending)
        generators = [torch.Generator("cpu").manual_seed(derive_seed(self.seed, "edit", p.key)) for p in pending]
        before, edit_start = self.pipe.counter.snapshot(), time.perf_counter()
        edited = self.method.edit_batch(self.pipe, inversions, [p.item for p in pending], generators)
        check_finite([edited], f"edit of {[p.item.item_id for p in pending]}")
        spent, edit_seconds = self.pipe.counter.since(before), time.perf_counter() - edit_start
        n, total_seconds = len(pending), time.perf_counter() - start
        for p, image, inversion, inversion_cost in zip(pending, edited, inversions, inversion_costs):
            self._write(p, image, inversion, {
                **inversion_cost, "batch_items": n,
                "forward_calls_by_batch": spent["forward_calls_by_batch"],
                "backward_calls_by_batch": spent["backward_calls_by_batch"],
                "edit_nfe": shared(spent["nfe"], n), "edit_nfe_backward": shared(spent["nfe_backward"], n),
                "edit_seconds": shared(edit_seconds, n), "seconds": shared(total_seconds, n),
                "peak_memory_bytes": peak_memory_bytes(self.pipe.device)})
        self.summary.nfe += spent["nfe"]
        self.summary.nfe_backward += spent["nfe_backward"]

    def _write(self, p: Pending, edited: torch.Tensor, inversion: Inversion, cost: dict[str, Any]) -> None:
        png_path = records.edit_image_path(self.results_dir, self.label, p.key)
        with atomic_path(png_path) as tmp:
            to_pil(edited, truncate=True).save(tmp, format="PNG")  # as the references save edits
        for warning in p.warnings:
            log.warning("item %s: %s", p.item.item_id, warning)
        record = self._base_record(p.item, p.key)
        record.update({
            "status": "ok", "inversion_key": p.inv_key,
            # what the inversion reports about itself (NFE, seconds, optimisation iterations/losses, ...)
            "inversion": dict(inversion.meta),
            "item": {**record["item"], "image_sha256": p.image_sha, "preprocess": PREPROCESS_ID,
                     "resolution": self.pipe.resolution},
            "cost": cost,
            "quick": {"psnr_vs_source": float(psnr(edited.cpu(), p.image[0]))}, "warnings": p.warnings,
            "files": {"edited": png_path.relative_to(self.results_dir).as_posix(),
                      "source": records.source_image_path(self.results_dir, p.image_sha, self.pipe.resolution)
                      .relative_to(self.results_dir).as_posix()},
        })
        write_json(records.edit_record_path(self.results_dir, self.label, p.key), record)
        self.written.append(record)
        # a success supersedes this item's failure recorded before its image could be read
        records.edit_record_path(self.results_dir, self.label, self._early_key(p.item)).unlink(missing_ok=True)

    # -- the job ---------------------------------------------------------------------------
    def run_batch(self, items: list[EditItem]) -> list[str]:
        """Outcomes ("ok", "skipped", "failed") of up to B items; never raises for item-level errors."""
        outcomes = [self._prepare(item) for item in items]
        pending = [o for o in outcomes if isinstance(o, Pending)]
        done: dict[int, str] = {}
        if pending:
            try:
                self._edit(pending)
                done = {id(p): "ok" for p in pending}
            except Exception as err:  # which item? retry one at a time, so only the failing one is recorded
                if len(pending) == 1:
                    done = {id(pending[0]): self._fail(pending[0].item, pending[0].key, pending[0].warnings, err)}
                else:
                    for p in pending:
                        done[id(p)] = self.run_batch([p.item])[0]
        return [done[id(o)] if isinstance(o, Pending) else o for o in outcomes]

    def run(self) -> JobSummary:
        from tqdm.auto import tqdm

        clean_stale_tmp(self.results_dir)
        start = time.perf_counter()
        bar = tqdm(total=len(self.items), desc=f"{self.label} × {self.dataset.name}", unit="item",
                   disable=not self.progress)
        for first in range(0, len(self.items), self.batch_size):
            for outcome in self.run_batch(self.items[first:first + self.batch_size]):
                setattr(self.summary, outcome, getattr(self.summary, outcome) + 1)
                bar.update(1)
            bar.set_postfix(ok=self.summary.ok, skipped=self.summary.skipped, failed=self.summary.failed)
        bar.close()
        self.summary.seconds = time.perf_counter() - start
        return self.summary
