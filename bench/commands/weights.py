"""``bench weights {list,fetch} [--model sd14] [--metrics default]``: pre-download what a config needs.

For offline cluster nodes: run ``bench weights fetch`` on a machine with internet, then copy the
caches it prints (``TORCH_HOME``, ``HF_HOME`` / ``HF_HUB_CACHE``) to the nodes. ``list`` (also
``fetch --dry-run``) prints every weight file a config needs, where it is looked for and whether it
is already there, without touching the network.

Metric backbones are resolved exactly as the metric stage resolves them (``bench.metrics.backbones``);
the diffusion model through ``huggingface_hub.snapshot_download`` with the model config's
``allow_patterns`` (plus its ``image_encoder`` repo when it names one).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from bench.metrics.backbones import Backbone, WeightsNotFoundError, downloads_allowed
from bench.models import hf_cache_dir


@dataclass
class Need:
    """One thing to fetch: what it is, who needs it, and how to find / download it."""

    what: str
    needed_by: str
    searched: list[str]
    find: Callable[[], str | None]  # a local path when present (no network)
    download: Callable[[], str]  # downloads into the library cache, returns the path


def compose(model: str | None, metrics: str | None) -> dict[str, Any]:
    """The model and metrics config groups, resolved (interpolations such as ${paths.root_dir})."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    from bench.config import CONF_DIR

    os.environ.setdefault("EDITBENCH_ROOT", str(CONF_DIR.parent))
    overrides = []
    if model:
        overrides.append(f"model={model}")
    if metrics:
        overrides.append(f"metrics={metrics}")
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("config", overrides=overrides)
    return {"model": OmegaConf.to_container(cfg.model, resolve=True) if model else None,
            "metrics": OmegaConf.to_container(cfg.metrics, resolve=True) if metrics else None}


def _backbone_need(backbone: Backbone, metric_id: str) -> Need:
    def find() -> str | None:
        found = backbone.find()
        return found.path if found else None

    return Need(backbone.describe(), metric_id, backbone.searched(), find, lambda: backbone.download().path)


def _hub_need(repo: str, revision: str | None, patterns: list[str] | None, needed_by: str) -> Need:
    from huggingface_hub import snapshot_download

    def find() -> str | None:
        if Path(repo).is_dir():
            return repo
        try:
            return snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=True)
        except Exception:  # not cached
            return None

    searched = [f"local folder {repo}"] if Path(repo).is_absolute() else [
        f"Hugging Face cache {hf_cache_dir()} (repo {repo}, files {patterns or 'all'})"]
    return Need(f"Hugging Face repo {repo!r} (revision {revision or 'main'})", needed_by, searched, find,
                lambda: snapshot_download(repo, revision=revision, allow_patterns=patterns))


def needs_for(model_cfg: dict[str, Any] | None, metrics_cfg: Any) -> list[Need]:
    """Everything the model config and the metric set need, de-duplicated."""
    from bench.metrics.registry import build_metrics

    needs: list[Need] = []
    seen: set = set()
    if model_cfg:
        name = str(model_cfg.get("name") or model_cfg.get("path"))
        if not model_cfg.get("build") and not Path(str(model_cfg["path"])).is_dir():  # built-in-code models: nothing
            needs.append(_hub_need(str(model_cfg["path"]), model_cfg.get("revision"),
                                   model_cfg.get("allow_patterns"), f"model {name}"))
        encoder = model_cfg.get("image_encoder") or {}
        if encoder.get("path") and not Path(str(encoder["path"])).is_dir():
            needs.append(_hub_need(str(encoder["path"]), None, ["*.json", "*.txt", "*.safetensors"],
                                   f"model {name} (image_encoder)"))
    if metrics_cfg:
        for metric in build_metrics(metrics_cfg):
            for backbone in metric.backbones():
                if backbone.key() in seen:
                    continue
                seen.add(backbone.key())
                needs.append(_backbone_need(backbone, metric.id))
    return needs


def _status(need: Need) -> tuple[str, str | None]:
    try:
        path = need.find()
    except WeightsNotFoundError as err:  # an explicit path that does not exist
        return "missing", str(err).splitlines()[0]
    return ("present", path) if path else ("missing", None)


def run(args) -> int:
    cfgs = compose(args.model, args.metrics)
    needs = needs_for(cfgs["model"], cfgs["metrics"])
    if not needs:
        print("nothing to fetch")
        return 0
    dry = args.action == "list" or args.dry_run
    failures = 0
    for need in needs:
        status, path = _status(need)
        print(f"- {need.what}  [needed by {need.needed_by}]")
        if status == "present":
            print(f"    present: {path}")
            continue
        if dry:
            print("    missing; searched:\n" + "\n".join(f"      {s}" for s in need.searched))
            continue
        if not downloads_allowed():
            failures += 1
            print(f"    ERROR: cannot download {need.what}: offline (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE / "
                  "EDITBENCH_OFFLINE is set). Run `bench weights fetch` on a machine with internet and copy "
                  "the caches.\n    searched:\n" + "\n".join(f"      {s}" for s in need.searched), file=sys.stderr)
            continue
        try:
            stored = need.download()
        except Exception as err:  # network/auth errors: report each, go on with the rest
            failures += 1
            print(f"    ERROR: download of {need.what} failed: {type(err).__name__}: {err}", file=sys.stderr)
            continue
        print(f"    stored: {stored}")
    if not dry:
        import torch

        print(f"caches: TORCH_HOME hub dir {torch.hub.get_dir()}; Hugging Face {hf_cache_dir()}")
    return 1 if failures else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("weights", help="list or pre-download model and metric weights (for offline nodes)")
    parser.add_argument("action", choices=["fetch", "list"], help="fetch: download what is missing; list: show status")
    parser.add_argument("--model", default=None, help="model config name (conf/model/<name>.yaml), e.g. sd14")
    parser.add_argument("--metrics", default="default", help="metric set (conf/metrics/<name>.yaml); default: default")
    parser.add_argument("--dry-run", action="store_true", help="fetch: only print what would be fetched")
    parser.set_defaults(func=run)
