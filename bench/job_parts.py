"""Building a job's pieces from its composed config: the method (and its scheduler config), the
dataset (and its shard). Shared by the runner, the preflight, the analyses and the perf tool."""

from __future__ import annotations

from collections import OrderedDict
from typing import TYPE_CHECKING, Any

from omegaconf import DictConfig, OmegaConf

from bench.config import instantiate
from bench.data.base import Dataset
from bench.data.item import EditItem

if TYPE_CHECKING:  # methods import torch; the preflight builds the dataset from here without them
    from methods.base import Method


def method_from_config(method_cfg: DictConfig | dict) -> tuple[Method, dict[str, Any]]:
    """Instantiate the method (its config minus the scheduler) → (method, scheduler config)."""
    from bench.job_checks import check_hparam_types

    plain = OmegaConf.to_container(method_cfg, resolve=True) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
    scheduler_cfg = plain.pop("scheduler", None)
    if scheduler_cfg is None:
        raise ValueError(f"method config {plain.get('_target_')!r} has no 'scheduler' entry; every method names "
                         "its DDIM scheduler config (see conf/scheduler/)")
    check_hparam_types(plain)
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
