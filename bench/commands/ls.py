"""``bench ls {methods,datasets,metrics,experiments,models,...}``: what the config registry holds.

Each entry shows the first sentence of its yaml's leading comment, never cut. The group may be named
in the singular as well (``bench ls method``). ``bench ls metrics`` lists every metric id (what
``metrics.ids`` takes) with its protocol, unit, direction and the metric sets that define it.
"""

from __future__ import annotations

import re
import shutil
import sys
import textwrap
from typing import Any

import yaml

from bench.config import config_file, group_options

GROUPS = {"methods": "method", "datasets": "dataset", "metrics": "metrics", "experiments": "experiment",
          "models": "model", "schedulers": "scheduler", "loggers": "logger", "launchers": "launcher"}
ALIASES = {**{group: plural for plural, group in GROUPS.items()}, **{plural: plural for plural in GROUPS}}


def first_sentence(text: str) -> str:
    """The first sentence of a (joined) comment block: up to '. ' / '; ' at top level, else all of it."""
    depth = 0
    for i, char in enumerate(text):
        depth += char in "(["
        depth -= char in ")]"
        if depth <= 0 and char in ".;" and (i + 1 == len(text) or text[i + 1] == " "):
            return text[: i + 1] if char == "." else text[:i]
    return text


def _summary(group: str, name: str) -> str:
    """The first sentence of the yaml's leading comment block (its description), else its _target_."""
    text = config_file(group, name).read_text(encoding="utf-8")
    block: list[str] = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("# @package"):
            continue
        if not stripped.startswith("#"):
            break
        block.append(stripped.lstrip("# ").strip())
    if block:
        return first_sentence(" ".join(block))
    data = yaml.safe_load(text) or {}
    return str(data.get("_target_", "")) if isinstance(data, dict) else ""


def _print_rows(rows: list[tuple[str, str]]) -> None:
    width = max((len(name) for name, _ in rows), default=0)
    columns = max(shutil.get_terminal_size((120, 20)).columns, width + 40)
    for name, text in rows:
        print(textwrap.fill(text, width=columns, initial_indent=f"{name:<{width}}  ",
                            subsequent_indent=" " * (width + 2)) if text else name)


def metric_rows() -> list[dict[str, Any]]:
    """One row per metric id over every metric set: protocol, unit, direction, display scale, sets.
    Direction and scale are class attributes of the metric (read without building it)."""
    from bench.models import import_object

    rows: dict[str, dict[str, Any]] = {}
    for metric_set in group_options("metrics"):
        cfg = yaml.safe_load(config_file("metrics", metric_set).read_text(encoding="utf-8")) or {}
        for metric_id, entry in (cfg.get("registry") or {}).items():
            if metric_id in rows:
                rows[metric_id]["sets"].append(metric_set)
                continue
            metric = import_object(entry["_target_"])
            rows[metric_id] = {"id": metric_id, "direction": "↑" if metric.higher_is_better else "↓",
                               "scale": float(metric.display_scale), "unit": metric.unit,
                               "protocol": _protocol(metric, metric_id), "sets": [metric_set]}
    return list(rows.values())


def _protocol(metric_cls: type, metric_id: str) -> str:
    """The class docstring's first sentence, else the module docstring's line about this id."""
    doc = " ".join((metric_cls.__doc__ or "").split())
    if doc:
        return first_sentence(doc)
    lines = (sys.modules[metric_cls.__module__].__doc__ or "").splitlines()
    for k, line in enumerate(lines):
        match = re.match(rf"(\s*[-*]?\s*)(?:``)?{metric_id}(?:``)?\s*[:=]\s*(.*)", line)
        if match:  # the entry, with its continuation lines (indented deeper than the entry itself)
            text, indent = [match.group(2)], len(line) - len(line.lstrip())
            for more in lines[k + 1:]:
                if not more.strip() or len(more) - len(more.lstrip()) <= indent:
                    break
                text.append(more.strip())
            return first_sentence(" ".join(" ".join(text).split()))
    return metric_cls.__name__


def list_metrics() -> None:
    print("metric sets (metrics=<set>):")
    _print_rows([(name, _summary("metrics", name)) for name in group_options("metrics")])
    print("\nmetric ids (metrics.ids=[...]); ↑/↓ = higher/lower is better, ×k = shown multiplied by k in tables:")
    rows = metric_rows()
    _print_rows([(row["id"], f"{row['direction']} {'×%g' % row['scale'] if row['scale'] != 1 else '':<6} "
                  f"{row['unit']:<2}  {row['protocol']} [sets: {', '.join(row['sets'])}]") for row in rows])


def list_group(args) -> int:
    plural = ALIASES[args.what]
    if plural == "metrics":
        list_metrics()
        return 0
    group = GROUPS[plural]
    _print_rows([(name, _summary(group, name)) for name in group_options(group)])
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("ls", help="list methods, datasets, metrics, experiments, ...")
    parser.add_argument("what", choices=sorted(ALIASES), metavar="{" + ",".join(sorted(GROUPS)) + "}",
                        help="a config group, plural or singular")
    parser.set_defaults(func=list_group)
