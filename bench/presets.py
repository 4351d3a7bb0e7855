"""Which values of a job's method differ from the method's paper defaults, recorded at run time.

A job's method config is ``conf/method/<label>.yaml`` (the paper defaults, each value citing its
reference), then an optional per-model preset ``conf/method_model/<label>_<model>.yaml`` (e.g. fewer
steps on the toy model), then experiment and command-line overrides. Every record stores the preset's
name and the paper defaults (the method config composed without the preset or any override), so
tables and the report can show each value that differs from them without reading config files.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from bench.config import job_choices
from bench.formatting import format_number


def _compose(overrides: list[str]) -> DictConfig:
    """Compose the config; inside a running Hydra app (launcher workers included) with its loader."""
    from hydra import compose
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return compose("config", overrides=overrides)
    from hydra import initialize_config_dir

    from bench.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


def paper_defaults(label: str) -> dict[str, Any] | None:
    """The hyperparameters of ``conf/method/<label>.yaml`` as composed (parents, interpolations), None when
    there is no such config."""
    try:
        paper = _compose([f"method={label}", "~method_model"]).method
    except Exception:  # a method given only as a _target_ (no conf/method/<label>.yaml): nothing to compare
        return None
    values = OmegaConf.to_container(paper, resolve=True)
    return {k: v for k, v in values.items() if k not in ("_target_", "scheduler")}


def method_provenance(cfg: DictConfig, label: str) -> dict[str, Any]:
    """{"preset": the per-model preset applied (or None), "paper_defaults": {hparam: value}}."""
    if not (OmegaConf.select(cfg, "method._target_") and label):
        return {"preset": None, "paper_defaults": None}
    return {"preset": job_choices(cfg).get("method_model"), "paper_defaults": paper_defaults(label)}


def same(a: Any, b: Any) -> bool:
    """Equal hyperparameter values (numbers up to float round-off; lists and tuples alike)."""
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def differing(hparams: dict[str, Any], paper_defaults: dict[str, Any] | None) -> dict[str, Any]:
    """The hyperparameters whose value differs from the paper default (keys in both only)."""
    if not paper_defaults:
        return {}
    return {k: v for k, v in hparams.items() if k in paper_defaults and not same(v, paper_defaults[k])}


# ----------------------------------------------------------------------------------------------
# tables: what differs from the paper, and the order of swept points


def record_paper_defaults(edits: pd.DataFrame, method: str) -> dict[str, Any]:
    """The method's paper defaults as its records carry them (written at run time, bench.presets); for
    records written before they did, the method config composed now."""
    stored = [json.loads(d) for d in edits.loc[edits["method"] == method, "paper_defaults"] if d]
    if stored:
        return stored[0]
    return paper_defaults(method) or {}


def changed_from_paper(edits: pd.DataFrame) -> pd.Series:
    """Per record: every hyperparameter that differs from the method's paper default, 'k=v, ...', with the
    per-model preset that set values (e.g. '[ef_ddpm_toy]'); '' when the record runs the paper's values."""
    defaults = {m: record_paper_defaults(edits, m) for m in edits["method"].unique()}
    texts = []
    for method, hparams, preset in zip(edits["method"], edits["hparams"], edits["preset"]):
        changed = differing(json.loads(hparams), defaults[method])
        text = ", ".join(f"{k}={format_number(v)}" for k, v in sorted(changed.items()))
        texts.append(f"{text} [{preset}]" if preset and text else text)
    return pd.Series(texts, index=edits.index, dtype=object)


def _point_sort_key(point: str) -> tuple:
    """'skip=5, cfg=7.5' → ((0, 5.0, ''), (0, 7.5, '')): numbers compare as numbers, so skip=5 < skip=10."""
    key = []
    for part in str(point).split(", "):
        value = part.partition("=")[2]
        try:
            key.append((0, float(value), ""))
        except ValueError:
            key.append((1, 0.0, value))
    return tuple(key)


def order_points(table: pd.DataFrame) -> pd.DataFrame:
    """Rows by (dataset,) method, then the swept values numerically."""
    by = [c for c in ("dataset", "method") if c in table.columns]
    keyed = table.assign(_order=table["point"].map(_point_sort_key))
    return keyed.sort_values(by + ["_order"], kind="stable").drop(columns="_order").reset_index(drop=True)
