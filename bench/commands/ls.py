"""``bench ls {methods,datasets,metrics,experiments,models}``: what the config registry holds."""

from __future__ import annotations

import yaml

from bench.config import config_file, group_options

GROUPS = {"methods": "method", "datasets": "dataset", "metrics": "metrics", "experiments": "experiment",
          "models": "model", "schedulers": "scheduler", "loggers": "logger", "launchers": "launcher"}


def _summary(group: str, name: str) -> str:
    """The first comment line of the yaml (its one-line description), else its _target_."""
    text = config_file(group, name).read_text(encoding="utf-8")
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") and not stripped.startswith("# @package"):
            return stripped.lstrip("# ")
    data = yaml.safe_load(text) or {}
    return str(data.get("_target_", "")) if isinstance(data, dict) else ""


def list_group(args) -> int:
    group = GROUPS[args.what]
    names = group_options(group)
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {_summary(group, name)}")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("ls", help="list methods, datasets, metrics, experiments, ...")
    parser.add_argument("what", choices=sorted(GROUPS))
    parser.set_defaults(func=list_group)
