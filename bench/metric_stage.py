"""The metric stage: score every finished edit record once per (metric id, version).

``score_results(results_dir, metric_cfgs, ...)`` reads ``edits/**.json`` (status "ok"), builds the
``MetricInput`` of each record from its saved files (edited PNG, preprocessed source PNG, the
item's ground-truth mask / target image if any, at the edited image's resolution), and writes one
record per (edit, metric) to ``metrics/<metric_id>/<key>.json`` atomically.

Score key = content_key of: sha256 of the edited PNG, sha256 of the source PNG, metric id, version,
backbone identity (path-independent), the metric's value-changing settings, and the item fields a
metric may read (prompts, blend words, sha256 of the mask file). An existing record with that key
is never recomputed, so a re-run does no backbone forward pass (``summary["backbone_forward_calls"]``).

Work is grouped by metric, metrics sharing a backbone run back to back, each backbone is loaded once
per call (``BackboneStore``) and released after its last metric. ``check_backbones`` resolves every
backbone up front so a run fails before any editing when weights are missing offline.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from bench import records
from bench.config import to_plain
from bench.data.item import EditItem
from bench.data.preprocess import from_pil, open_image, preprocess, preprocess_mask
from bench.fingerprint import file_sha256
from bench.hashing import content_key
from bench.io import write_json
from bench.metrics.backbones import BackboneStore, PipelineSource, WeightsNotFoundError
from bench.metrics.base import Metric, MetricInput
from bench.metrics.registry import build_metrics

log = logging.getLogger(__name__)

METRIC_RECORD_SCHEMA = 1
_ITEM_FIELDS = {f for f in EditItem.__dataclass_fields__}  # type: ignore[attr-defined]


def check_backbones(metric_cfgs: Any, allow_download: bool | None = None) -> dict[str, list[str]]:
    """Resolve the weights of every configured metric now; raise one ``WeightsNotFoundError`` listing
    every missing backbone. Returns {metric id: [backbone identity, ...]}."""
    metrics = build_metrics(metric_cfgs)
    resolved: dict[str, list[str]] = {}
    problems: list[str] = []
    seen: dict[tuple, str] = {}
    for metric in metrics:
        resolved[metric.id] = []
        for backbone in metric.backbones():
            if backbone.key() in seen:
                resolved[metric.id].append(seen[backbone.key()])
                continue
            try:
                identity = backbone.resolve(allow_download).identity
            except WeightsNotFoundError as err:
                problems.append(f"[metric {metric.id}] {err}")
                continue
            seen[backbone.key()] = identity
            resolved[metric.id].append(identity)
    if problems:
        raise WeightsNotFoundError(f"{len(problems)} metric backbone(s) unavailable:\n" + "\n".join(problems))
    return resolved


# ----------------------------------------------------------------------------------------------
# inputs

def item_from_record(item: dict[str, Any]) -> EditItem:
    fields = {k: v for k, v in item.items() if k in _ITEM_FIELDS}
    if fields.get("blend_words") is not None:
        fields["blend_words"] = tuple(fields["blend_words"])
    return EditItem(**fields)


class _Inputs:
    """Loads MetricInputs for edit records (small LRU of decoded images; sha256 per file cached)."""

    def __init__(self, results_dir: Path, capacity: int = 64):
        self.results_dir = results_dir
        self._images: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._shas: dict[str, str] = {}
        self.capacity = capacity

    def path(self, rel: str) -> Path:
        return self.results_dir / rel

    def sha(self, path: Path | str) -> str:
        key = str(path)
        if key not in self._shas:
            self._shas[key] = file_sha256(path)
        return self._shas[key]

    def _cached(self, key: tuple, load: Callable[[], torch.Tensor]) -> torch.Tensor:
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        value = load()
        self._images[key] = value
        if len(self._images) > self.capacity:
            self._images.popitem(last=False)
        return value

    def image(self, path: Path) -> torch.Tensor:
        return self._cached(("img", str(path)), lambda: from_pil(open_image(path)))

    def mask(self, path: str, resolution: int) -> torch.Tensor:
        return self._cached(("mask", path, resolution), lambda: preprocess_mask(open_image(path, "mask"), resolution))

    def target(self, path: str, resolution: int) -> torch.Tensor:
        return self._cached(("target", path, resolution), lambda: preprocess(open_image(path, "target image"),
                                                                            resolution)[0])

    def build(self, record: dict[str, Any]) -> MetricInput:
        item = item_from_record(record["item"])
        edited = self.image(self.path(record["files"]["edited"]))
        source = self.image(self.path(record["files"]["source"]))
        resolution = int(edited.shape[-1])
        mask = self.mask(item.mask_path, resolution) if item.mask_path else None
        target = self.target(item.target_image_path, resolution) if item.target_image_path else None
        return MetricInput(source=source, edited=edited, item=item, mask=mask, target_image=target, record=record)

    def item_identity(self, record: dict[str, Any]) -> dict[str, Any]:
        item = record["item"]
        mask_path = item.get("mask_path")
        return {"source_prompt": item.get("source_prompt"), "target_prompt": item.get("target_prompt"),
                "blend_words": item.get("blend_words"),
                "mask_sha256": self.sha(mask_path) if mask_path else None,
                "target_image_sha256": self.sha(item["target_image_path"]) if item.get("target_image_path") else None}


# ----------------------------------------------------------------------------------------------
# the stage

def _json_value(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def score_results(results_dir: str | Path, metric_cfgs: Any, pipe_loader: Callable[[], Any] | None = None, *,
                  pipe: Any = None, device: str | torch.device | None = None, batch_size: int | None = None,
                  allow_download: bool | None = None, methods: list[str] | None = None) -> dict[str, Any]:
    """Score every ok edit record under ``results_dir`` with every configured metric not yet scored.

    ``metric_cfgs``: the metrics group config ({ids, registry}), a list of ``_target_`` configs,
    ``Metric`` objects or ids. ``pipe`` / ``pipe_loader``: the diffusion pipeline (or a callable
    returning it) for metrics that need one (``ns_lpips_sd``). ``methods``: only these edit-record
    method labels. Returns a summary with counts, failures and backbone forward-pass counts.
    """
    start = time.perf_counter()
    results_dir = Path(results_dir)
    metrics = build_metrics(metric_cfgs)
    if batch_size is None:
        plain = to_plain(metric_cfgs)
        plain = plain if isinstance(plain, dict) else {}
        batch_size = int(plain.get("batch_size") or 8)
    if device is None:
        device = pipe.device if pipe is not None else "cpu"
    store = BackboneStore(device, allow_download=allow_download)
    inputs = _Inputs(results_dir)
    pipeline = PipelineSource(pipe, pipe_loader)
    for metric in metrics:
        metric.bind(store)
        metric.attach(results_dir, pipeline)

    ok = []
    for rec in records.iter_edit_records(results_dir):
        if rec.get("status") != "ok" or not rec.get("files"):
            continue
        if methods and rec.get("method", {}).get("label") not in methods:
            continue
        ok.append(rec)

    # metrics that share a backbone run back to back; each backbone is released after its last user
    order = sorted(range(len(metrics)), key=lambda i: ([b.key() for b in metrics[i].backbones()], i))
    metrics = [metrics[i] for i in order]
    last_user: dict[tuple, int] = {}
    for index, metric in enumerate(metrics):
        for backbone in metric.backbones():
            last_user[backbone.key()] = index

    per_metric: dict[str, Counter] = {}
    failures: list[dict[str, Any]] = []
    for index, metric in enumerate(metrics):
        counts = per_metric.setdefault(metric.id, Counter())
        try:
            pending = _pending(metric, ok, inputs, results_dir, counts)
            if pending:  # e.g. NS-LPIPS computes all pending masks in batched, job-shared calls
                metric.prepare(_prepared_inputs(pending, inputs))
            for chunk_start in range(0, len(pending), batch_size):
                chunk = pending[chunk_start: chunk_start + batch_size]
                _score_chunk(metric, chunk, inputs, results_dir, counts, failures)
        except WeightsNotFoundError:
            raise
        except Exception as err:  # a metric-level failure (e.g. its backbone cannot load) spares the others
            log.warning("metric %s failed: %s: %s", metric.id, type(err).__name__, err)
            failures.append({"metric_id": metric.id, "error": f"{type(err).__name__}: {err}"})
        for backbone in metric.backbones():
            if last_user.get(backbone.key()) == index:
                store.release(backbone)

    return {"records": len(ok), "scored": sum(c["scored"] for c in per_metric.values()),
            "skipped": sum(c["skipped"] for c in per_metric.values()),
            "nan": sum(c["nan"] for c in per_metric.values()),
            "by_metric": {k: dict(v) for k, v in per_metric.items()}, "failures": failures,
            "backbone_forward_calls": dict(store.forward_calls), "backbones_loaded": dict(store.loads),
            "seconds": time.perf_counter() - start}


def _pending(metric: Metric, ok: list[dict], inputs: _Inputs, results_dir: Path, counts: Counter) -> list[tuple]:
    """(record, key) pairs without a metric record yet."""
    if not ok:
        return []
    backbone = metric.backbone  # resolves weights (no forward pass); for ns_lpips_sd the pipeline identity
    config = metric.config()
    pending = []
    for rec in ok:
        edited_sha = inputs.sha(inputs.path(rec["files"]["edited"]))
        source_sha = inputs.sha(inputs.path(rec["files"]["source"]))
        key = content_key({"edited_sha256": edited_sha, "source_sha256": source_sha, "metric_id": metric.id,
                           "version": metric.version, "backbone": backbone, "config": config,
                           "item": inputs.item_identity(rec)})
        if records.metric_record_path(results_dir, metric.id, key).is_file():
            counts["skipped"] += 1
            continue
        pending.append((rec, key, edited_sha, source_sha, backbone))
    return pending


def _input(entry: tuple, inputs: _Inputs) -> MetricInput:
    rec = entry[0]
    inp = inputs.build(rec)
    inp.record = {**rec, "_source_sha256": entry[3]}
    return inp


def _prepared_inputs(pending: list[tuple], inputs: _Inputs) -> Iterator[MetricInput]:
    """The pending inputs for ``Metric.prepare``; unreadable records are skipped (scoring reports them)."""
    for entry in pending:
        try:
            yield _input(entry, inputs)
        except Exception:  # noqa: BLE001 (reported by _score_chunk)
            continue


def _score_chunk(metric: Metric, chunk: list[tuple], inputs: _Inputs, results_dir: Path, counts: Counter,
                 failures: list[dict[str, Any]]) -> None:
    batch, kept = [], []
    for entry in chunk:
        try:
            inp = _input(entry, inputs)
        except Exception as err:  # a record whose files are gone or unreadable: report, keep going
            failures.append({"metric_id": metric.id, "edit_key": entry[0].get("key"),
                             "error": f"{type(err).__name__}: {err}"})
            continue
        batch.append(inp)
        kept.append(entry)
    if not batch:
        return
    values = metric.score(batch)
    if len(values) != len(batch):
        raise RuntimeError(f"metric {metric.id!r} returned {len(values)} values for {len(batch)} inputs")
    describe = metric.describe() if hasattr(metric, "describe") else {}
    for (rec, key, edited_sha, source_sha, backbone), value in zip(kept, values):
        stored = _json_value(value)
        write_json(records.metric_record_path(results_dir, metric.id, key), {
            "schema": METRIC_RECORD_SCHEMA, "key": key, "edit_key": rec.get("key"), "metric_id": metric.id,
            "version": metric.version, "value": stored, "is_nan": stored is None,
            "higher_is_better": metric.higher_is_better, "display_scale": metric.display_scale,
            "backbone": backbone, "config": describe.get("config", {}),
            "method": rec.get("method", {}).get("label"), "item_id": rec.get("item", {}).get("item_id"),
            "dataset": rec.get("dataset", {}).get("name") if isinstance(rec.get("dataset"), dict) else None,
            "edited_sha256": edited_sha, "source_sha256": source_sha,
            "created_at": datetime.now(timezone.utc).isoformat(),
        })
        counts["scored"] += 1
        if stored is None:
            counts["nan"] += 1
