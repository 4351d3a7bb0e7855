"""What an analysis gets from the harness: methods, items, the pipeline, cached inversions, metrics, output.

Inversions are cached exactly as the edit runner caches them: the same content key
(``bench.runner.inversion_key``), the same file (``inversions/<method>/<key>.safetensors``) and the same
noise stream (``derive_seed(seed, "invert", image sha256, source prompt)``), so an analysis re-run, or an
edit job writing into the same results dir, reuses them instead of recomputing.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from bench import records
from bench.analyses.output import Section
from bench.data.item import EditItem
from bench.data.preprocess import load_image_tensor
from bench.hashing import derive_seed
from methods.base import Inversion, Method

log = logging.getLogger(__name__)


def config_choice(cfg: DictConfig, group: str) -> str | None:
    """The option chosen for a config group (``model``, ``method``) of the composed config."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return str(HydraConfig.get().runtime.choices[group])
    except (ValueError, KeyError, AttributeError):  # composed without a running Hydra app (tests, API use)
        choice = OmegaConf.select(cfg, f"hydra.runtime.choices.{group}", default=None)
        return None if choice is None else str(choice)


def compose_method_config(method: str, model: str | None) -> DictConfig:
    """``cfg.method`` as ``bench method=<method> model=<model>`` composes it (per-model presets included)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bench.config import CONF_DIR

    overrides = [f"method={method}"] + ([f"model={model}"] if model else [])
    if GlobalHydra.instance().is_initialized():  # inside the running `bench` app
        return compose("config", overrides=overrides).method
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides).method


class AnalysisContext:
    def __init__(self, cfg: DictConfig, name: str):
        self.cfg, self.name = cfg, name
        self.results_dir = Path(cfg.paths.results_dir)
        self.seed = int(cfg.seed)
        self.section = Section(self.results_dir / "analyses" / name, title=str(cfg.analysis.get("title") or name))
        self._pipe = None

    # methods -----------------------------------------------------------------------------
    @cached_property
    def method(self) -> tuple[Method, dict, str]:
        """(the experiment's method, its scheduler config, its label)."""
        from bench.job_parts import method_from_config

        method, scheduler_cfg = method_from_config(self.cfg.method)
        return method, scheduler_cfg, config_choice(self.cfg, "method") or method.name

    def baseline(self, name: str, same_hparams: bool = False) -> tuple[Method, dict, str]:
        """(method ``name`` composed for this experiment's model, its scheduler config, its label). With
        ``same_hparams`` it takes the experiment's method's hyperparameters instead of its own (naive DDPM vs
        EF-DDPM: the same T, η, guidance, so that only the noise space differs)."""
        from bench.job_parts import method_from_config

        method, scheduler_cfg = method_from_config(compose_method_config(name, config_choice(self.cfg, "model")))
        if same_hparams:
            method = type(method)(**self.method[0].hparams())
        return method, scheduler_cfg, name

    # data --------------------------------------------------------------------------------
    def items(self, keep=None, needs: str = "") -> list[EditItem]:
        """The dataset's items (shard, then ``keep`` filter, then ``limit``): one per image. ``needs`` says
        what ``keep`` looks for (the error when nothing passes)."""
        from bench.job_parts import dataset_from_config, select_shard

        dataset, shard, num_shards = dataset_from_config(self.cfg.dataset)
        items, seen = [], set()
        for item in select_shard(dataset.items(), shard, num_shards):
            if item.image_id not in seen and (keep is None or keep(item)):
                items.append(item)
                seen.add(item.image_id)
        if self.cfg.get("limit"):
            items = items[: int(self.cfg.limit)]
        if not items:
            raise ValueError(f"analysis {self.name}: dataset {dataset.name!r} has no usable items"
                             + (f" (it needs {needs or 'items passing its filter'})" if keep is not None else ""))
        return items

    def source(self, item: EditItem) -> tuple[torch.Tensor, str]:
        """(the preprocessed source (1, 3, R, R) in [-1, 1] on the pipeline's device, its file sha256)."""
        image, sha = load_image_tensor(item.image_path, self.pipe.resolution)
        return image.to(self.pipe.device, self.pipe.dtype), sha

    # the model ---------------------------------------------------------------------------
    @property
    def pipe(self):
        if self._pipe is None:
            from bench.models import load_pipeline

            self._pipe = load_pipeline(OmegaConf.to_container(self.cfg.model, resolve=True), self.method[1],
                                       device=self.cfg.runtime.device, dtype=self.cfg.runtime.dtype)
            if self.cfg.model.get("random_weights"):
                self.section.note(f"Model {self.cfg.model.name} has RANDOM WEIGHTS: the numbers below exercise the "
                                  "code path at this model's shapes and say nothing about the method.")
        return self._pipe

    def pipe_for(self, scheduler_cfg: dict):
        """The pipeline with ``scheduler_cfg``'s scheduler (methods may name different DDIM configs)."""
        from bench.models import build_scheduler, scheduler_record

        pipe = self.pipe
        if scheduler_record(pipe.scheduler) != scheduler_record(build_scheduler(dict(scheduler_cfg))):
            pipe.scheduler = build_scheduler(dict(scheduler_cfg))
        return pipe

    def inversion(self, method: Method, label: str, scheduler_cfg: dict, item: EditItem, image: torch.Tensor,
                  sha: str) -> Inversion:
        """``method.invert`` of the item's source, from the results dir's inversion cache when present."""
        from bench.keys import inversion_key

        pipe = self.pipe_for(scheduler_cfg)
        key = inversion_key(pipe, scheduler_cfg, method, sha, item.source_prompt, self.seed)
        path = records.inversion_path(self.results_dir, label, key)
        if path.is_file():
            return Inversion.load(str(path)).to(pipe.device, pipe.dtype)
        generator = torch.Generator("cpu").manual_seed(derive_seed(self.seed, "invert", sha, item.source_prompt))
        inversion = method.invert(pipe, image, item.source_prompt, generator)
        inversion.save(str(path))
        return inversion

    def generator(self, *parts: Any) -> torch.Generator:
        """A CPU generator seeded from the job seed and ``parts`` (stable across runs and item order)."""
        return torch.Generator("cpu").manual_seed(derive_seed(self.seed, self.name, *parts))

    # metrics -----------------------------------------------------------------------------
    def metric(self, metric_id: str):
        """The metric ``metric_id`` as the experiment's metric set configures it (e.g. the toy LPIPS)."""
        from bench.metrics.registry import build_metrics

        registry = OmegaConf.to_container(self.cfg.metrics, resolve=True).get("registry") or {}
        return build_metrics({"ids": [metric_id], "registry": registry})[0]

    def describe_runtime(self) -> str:
        return (f"device {self.cfg.runtime.device}, {torch.get_num_threads()} "
                f"thread(s), {self.cfg.runtime.dtype}")
