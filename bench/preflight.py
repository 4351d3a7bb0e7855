"""Offline by default, and one check of everything a job needs before anything heavy is loaded.

``bench`` sets ``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` in its own process before any hub
library is imported, unless the user set them or opted in with ``online=true`` on the command line
(or ``EDITBENCH_ONLINE=1``): a run never spends minutes on hub retries. Weights are pre-fetched with
``bench weights fetch`` (docs/datasets.md, README "Running on real Stable Diffusion v1.4").

``check(cfg)`` resolves, without the network and without loading a network, every piece a job needs:
the diffusion model, its image encoder (methods that use one), every metric backbone and the
dataset's files, and raises one ``PreflightError`` that lists all missing pieces and one command that
fetches them all. It imports no torch, diffusers, transformers, open_clip or timm (the method's and the
metrics' needs are read from their configs and sources: bench/static_classes.py, bench/metric_needs.py,
where weights live: bench/weight_locations.py), so a job that cannot start fails in about a second;
``runner.run_from_config`` runs it before anything heavy is imported. The dataset's items it lists are
the job's items (``DatasetListing``): the dataset is read once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

from bench.errors import ModelNotFoundError

OFFLINE_VARS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
ONLINE_ENV = "EDITBENCH_ONLINE"
TRUE = {"1", "true", "yes", "on"}


def wants_online(argv: Iterable[str]) -> bool:
    """``online=true`` among the overrides, or ``EDITBENCH_ONLINE=1`` in the environment."""
    if os.environ.get(ONLINE_ENV, "").strip().lower() in TRUE:
        return True
    return any(arg.lstrip("+").partition("=")[0] == "online" and arg.partition("=")[2].lower() in TRUE
               for arg in argv)


def apply_offline_default(argv: Iterable[str]) -> bool:
    """Make this process offline for the hub libraries unless asked not to; True when offline.

    Must run before ``huggingface_hub`` / ``transformers`` are imported (they read the variables once).
    Variables the user set are left as they are."""
    if wants_online(argv):
        return False
    for var in OFFLINE_VARS:
        os.environ.setdefault(var, "1")
    return True


class PreflightError(ModelNotFoundError):
    """Something a job needs is not on this machine; the message lists every piece and the fetch command."""


@dataclass
class Need:
    """One thing to fetch: what it is, who needs it, and how to find / download it."""

    what: str
    needed_by: str
    searched: list[str]
    find: Callable[[], str | None]  # a local path when present (no network)
    download: Callable[[], str]  # downloads into the library cache, returns the path
    fetchable: bool = True  # False: a local path the user must provide (no command can fetch it)


def _backbone_need(backbone, metric_id: str) -> Need:
    def find() -> str | None:
        found = backbone.find()
        return found.path if found else None

    return Need(backbone.describe(), f"metric {metric_id}", backbone.searched(), find,
                lambda: backbone.download().path)


def _hub_need(repo: str, revision: str | None, patterns: list[str] | None, needed_by: str) -> Need:
    from huggingface_hub import snapshot_download

    from bench.weight_locations import hf_cache_dir

    local = Path(repo).is_absolute() or repo.startswith((".", "~"))

    def find() -> str | None:
        if Path(repo).expanduser().is_dir():
            return repo
        if local:
            return None
        try:
            return snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
        except Exception:  # huggingface_hub raises several types for "not cached"
            return None

    searched = [f"local folder {repo}"] if local else [
        f"Hugging Face cache {hf_cache_dir()} (repo {repo}, files {patterns or 'all'})"]
    return Need(f"local folder {repo}" if local else f"Hugging Face repo {repo!r} (revision {revision or 'main'})",
                needed_by, searched, find, lambda: snapshot_download(repo, revision=revision, allow_patterns=patterns),
                fetchable=not local)


def model_needs(model_cfg: dict[str, Any], image_encoder: bool = True) -> list[Need]:
    """The diffusion model (unless built in code or a folder that exists) and, when asked, its image encoder."""
    name = str(model_cfg.get("name") or model_cfg.get("path"))
    needs = []
    if not model_cfg.get("build") and not Path(str(model_cfg["path"])).expanduser().is_dir():
        needs.append(_hub_need(str(model_cfg["path"]), model_cfg.get("revision"), model_cfg.get("allow_patterns"),
                               f"model {name}"))
    encoder = model_cfg.get("image_encoder") or {}
    if image_encoder and encoder.get("path") and not Path(str(encoder["path"])).expanduser().is_dir():
        needs.append(_hub_need(str(encoder["path"]), None, ["*.json", "*.txt", "*.safetensors"],
                               f"model {name} (image_encoder)"))
    return needs


def metric_needs(metrics_cfg: Any) -> list[Need]:
    """Every metric backbone of the metric set, once each (metrics that share a network share it)."""
    from bench.metric_needs import entry_backbones
    from bench.metrics.registry import metric_entries

    needs, seen = [], set()
    for entry in metric_entries(metrics_cfg):
        metric_id, backbones = entry_backbones(entry)
        for backbone in backbones:
            if backbone.key() not in seen:
                seen.add(backbone.key())
                needs.append(_backbone_need(backbone, metric_id))
    return needs


def is_missing(need: Need) -> tuple[bool, str | None]:
    """(missing, where it is or why it is missing), never touching the network."""
    from bench.metrics.backbones import WeightsNotFoundError

    try:
        path = need.find()
    except WeightsNotFoundError as err:  # an explicit path that does not exist
        return True, str(err).splitlines()[0]
    return (False, path) if path else (True, None)


@dataclass
class DatasetListing:
    """The job's dataset, its shard, and every item of the dataset (read once, by the preflight)."""

    dataset: Any
    shard: int
    num_shards: int
    items: list


def list_dataset(dataset_cfg: dict[str, Any]) -> tuple[DatasetListing | None, str | None, str | None]:
    """(the listing, or why the dataset's items cannot be listed, the `bench data fetch` name when a
    manifest exists)."""
    from bench.data.item import ItemError
    from bench.data.manifest import ManifestError, repo_root
    from bench.job_parts import dataset_from_config

    dataset, shard, num_shards = dataset_from_config(dataset_cfg)
    try:
        items = dataset.items()
    except (ItemError, ManifestError, FileNotFoundError) as err:
        fetchable = (repo_root() / "datasets" / str(dataset.name) / "manifest.yaml").is_file()
        return None, str(err), str(dataset.name) if fetchable else None
    return DatasetListing(dataset, shard, num_shards, items), None, None


def uses_image_encoder(method_cfg: dict[str, Any]) -> bool:
    """The method class's ``uses_image_encoder``, read from its source (its module imports torch)."""
    from bench.config import ConfigError, check_dotted_path
    from bench.static_classes import class_constant

    target = check_dotted_path(method_cfg.get("_target_"), "method._target_")
    try:
        return bool(class_constant(target, "uses_image_encoder"))
    except (ImportError, AttributeError) as err:  # read from source when it can be, else imported
        raise ConfigError(f"method._target_={target!r} cannot be imported: {type(err).__name__}: {err}") from err


def fetch_command(model: str | None, metrics: str | None, datasets: list[str]) -> str:
    """One command that fetches a model group, a metric set and datasets (``bench weights fetch``)."""
    parts = ["bench weights fetch", f"--model {model}" if model else "", f"--metrics {metrics or 'none'}"]
    parts += [f"--data {name}" for name in datasets]
    return " ".join(p for p in parts if p)


def check(cfg: Any, choices: dict[str, str]) -> DatasetListing:
    """The job's dataset listing, or ``PreflightError`` listing every missing piece of the job ``cfg``
    (a composed config). ``choices`` are the job's config group choices (``model``, ``metrics``), used
    to write the command."""
    from omegaconf import OmegaConf

    plain = {part: OmegaConf.to_container(cfg[part], resolve=True)  # the job's parts only (not hydra's node)
             for part in ("model", "method", "metrics", "dataset", "paths")}
    lines, fetch_model, fetch_metrics = [], False, False
    for need in model_needs(plain["model"], image_encoder=uses_image_encoder(plain["method"])):
        missing, _ = is_missing(need)
        if missing:
            fetch_model = fetch_model or need.fetchable
            lines.append(f"- {need.what} [{need.needed_by}]; searched: {'; '.join(need.searched)}")
    if plain["metrics"].get("ids"):
        for need in metric_needs(plain["metrics"]):
            missing, why = is_missing(need)
            if missing:
                fetch_metrics = fetch_metrics or why is None
                detail = why or "searched: " + "; ".join(need.searched)
                lines.append(f"- {need.what} [{need.needed_by}]; {detail}")
    listing, problem, data_name = list_dataset(plain["dataset"])
    if problem:
        lines.append(f"- dataset files [dataset {data_name or plain['dataset'].get('_target_')}]: {problem}")
    if not lines:
        return listing
    command = fetch_command(choices.get("model") if fetch_model else None,
                            choices.get("metrics") if fetch_metrics else None,
                            [data_name] if data_name else [])
    fix = (f"fetch them all (on a machine with internet; then copy the caches HF_HOME, TORCH_HOME and "
           f"{plain['paths']['data_dir']} here):\n    {command}"
           if fetch_model or fetch_metrics or data_name else
           "set the paths above in the config (nothing here can be downloaded)")
    raise PreflightError(f"this job cannot start: {len(lines)} piece(s) missing on this machine:\n"
                         + "\n".join(lines) + f"\n  {fix}")
