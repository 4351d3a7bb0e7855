"""Metric registry: metric sets from ``conf/metrics/<set>.yaml`` → ``Metric`` objects; NaN-aware mean.

A metric set config has two keys::

    ids: [lpips_alex, clip_score, ...]          # what is scored, in table order
    registry:                                   # how each id is built (a `_target_` config)
      lpips_alex: {_target_: bench.metrics.lpips_metrics.LpipsDistance, net: alex}

The ``registry`` of the metric set configs is the one registry of metrics (``bench ls metrics`` lists
it). ``build_metrics`` accepts that mapping, or a list of ``_target_`` configs / ``Metric`` objects.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Iterable

from bench.config import ConfigError, instantiate, to_plain

if TYPE_CHECKING:  # metric classes import torch; reading a metric set's entries does not
    from bench.metrics.base import Metric


def metric_entries(metric_cfgs: Any) -> list[Any]:
    """Normalise any accepted form to a list of (Metric | _target_ dict)."""
    metric_cfgs = to_plain(metric_cfgs)
    if metric_cfgs is None:
        return []
    if isinstance(metric_cfgs, dict):
        if "_target_" in metric_cfgs:
            return [metric_cfgs]
        registry = metric_cfgs.get("registry") or {}
        entries = []
        for metric_id in metric_cfgs.get("ids") or []:
            if isinstance(metric_id, dict):  # an inline config in ids
                entries.append(metric_id)
            elif metric_id in registry:
                entries.append({"id": metric_id, **registry[metric_id]})
            else:
                raise ConfigError(f"metrics.ids contains {metric_id!r}, which is not in metrics.registry "
                                  f"({sorted(registry)}); add its _target_ config there")
        return entries
    if isinstance(metric_cfgs, (list, tuple)):
        return list(metric_cfgs)
    raise ConfigError(f"metrics config must be a mapping with ids/registry or a list, got {type(metric_cfgs).__name__}")


def build_metric(entry: Any) -> Metric:
    from bench.metrics.base import Metric

    if isinstance(entry, Metric):
        return entry
    if not isinstance(entry, dict):
        raise ConfigError(f"metric config must be a mapping with _target_, got {entry!r}")
    metric = instantiate(dict(entry), what=f"metrics.{entry.get('id', '?')}")
    if not isinstance(metric, Metric):
        raise ConfigError(f"metrics.{entry.get('id', '?')}: {entry['_target_']} is not a bench Metric")
    return metric


def build_metrics(metric_cfgs: Any) -> list[Metric]:
    metrics = [build_metric(entry) for entry in metric_entries(metric_cfgs)]
    seen: dict[str, Metric] = {}
    for metric in metrics:
        if metric.id in seen:
            raise ConfigError(f"metric id {metric.id!r} is configured twice; each protocol variant needs its own id")
        seen[metric.id] = metric
    return metrics


def mean_skipping_nan(values: Iterable[float | None]) -> tuple[float, int, int]:
    """(mean over finite-or-inf numbers, how many were used, how many were NaN/None and skipped).

    PIE-Bench's tables average each column with "nan" rows excluded; the count says how many.
    The mean of nothing is NaN.
    """
    used, skipped, total = 0, 0, 0.0
    for value in values:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            skipped += 1
            continue
        total += float(value)
        used += 1
    return (total / used if used else math.nan), used, skipped
