"""``bench weights {list,fetch} [--model sd14] [--metrics default] [--data NAME]``: pre-download what a job needs.

For offline cluster nodes: run ``bench weights fetch`` on a machine with internet, then copy the
caches it prints (``TORCH_HOME``, ``HF_HOME`` / ``HF_HUB_CACHE``) to the nodes. ``list`` (also
``fetch --dry-run``) prints every weight file a config needs, where it is looked for and whether it
is already there, without touching the network (``list`` without ``--model`` covers every hub model).
``--data NAME`` also fetches a dataset (``bench data fetch NAME``), so the one command a failed job's
preflight prints (``bench.preflight``) fetches everything it lacks.

Metric backbones are resolved exactly as the metric stage resolves them (``bench.metrics.backbones``);
the diffusion model through ``huggingface_hub.snapshot_download`` with the model config's
``allow_patterns`` (plus its ``image_encoder`` repo when it names one).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from bench.preflight import Need, is_missing, metric_needs, model_needs


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


def hub_models() -> list[str]:
    """The model configs whose weights come from the hub (not built in code, not committed)."""
    import yaml

    from bench.config import CONF_DIR, group_options

    return [name for name in group_options("model")
            if "${" not in str((yaml.safe_load((CONF_DIR / "model" / f"{name}.yaml").read_text()) or {}).get("path"))]


def needs_for(models: list[str], metrics: str | None) -> list[Need]:
    """Everything the model configs and the metric set need, de-duplicated by what is fetched."""
    needs: list[Need] = []
    for model in models:
        needs += model_needs(compose(model, None)["model"])
    if metrics:
        needs += metric_needs(compose(None, metrics)["metrics"])
    unique: dict[str, Need] = {}
    for need in needs:
        unique.setdefault(need.what, need)
    return list(unique.values())


def run(args) -> int:
    from bench.metrics.backbones import downloads_allowed
    from bench.models import hf_cache_dir

    dry = args.action == "list" or args.dry_run
    models = [args.model] if args.model else (hub_models() if dry else [])
    needs = needs_for(models, None if args.metrics == "none" else args.metrics)
    failures = 0
    for need in needs:
        missing, where = is_missing(need)
        print(f"- {need.what}  [needed by {need.needed_by}]")
        if not missing:
            print(f"    present: {where}")
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
    if not needs:
        print("no weights to fetch")
    if not dry:
        import torch

        print(f"caches: TORCH_HOME hub dir {torch.hub.get_dir()}; Hugging Face {hf_cache_dir()}")
    if args.data and not dry:  # the dataset files, as `bench data fetch <name>` would
        from bench.commands.data import fetch_command

        failures += fetch_command(argparse.Namespace(datasets=args.data, cache_dir=None, retries=3, timeout=60.0,
                                                     no_keep_archives=False, quiet=False))
    return 1 if failures else 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("weights", help="list or pre-download model and metric weights (for offline nodes)")
    parser.add_argument("action", choices=["fetch", "list"], help="fetch: download what is missing; list: show status")
    parser.add_argument("--model", default=None,
                        help="model config name (conf/model/<name>.yaml), e.g. sd14; list: default every hub model")
    parser.add_argument("--metrics", default="default",
                        help="metric set (conf/metrics/<name>.yaml, `none` for no metrics); default: default")
    parser.add_argument("--data", action="append", default=[],
                        help="fetch: also `bench data fetch` this dataset (repeatable)")
    parser.add_argument("--dry-run", action="store_true", help="fetch: only print what would be fetched")
    parser.set_defaults(func=run)
