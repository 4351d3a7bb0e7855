"""Unknown ``method.<key>=`` overrides: one clear error listing the method's keys, before Hydra runs.

Hydra's own message for ``method.foo=1`` is "Key 'foo' is not in struct" with a hint to write
``+method.foo=1`` (which then fails when the method is built). Methods share one vocabulary for
shared hyperparameters (docs/methods.md); the reference implementations' names for them are
mapped in ``SHARED_NAMES`` so the error says which name to use.
"""

from __future__ import annotations

import re
import sys
from typing import Iterable

# reference / older names → the shared name every method config uses
SHARED_NAMES = {
    "num_inference_steps": "num_steps", "num_diffusion_steps": "num_steps", "num_ddim_steps": "num_steps",
    "steps": "num_steps", "cfg_src": "inversion_guidance_scale", "cfg_tar": "guidance_scale",
    "cfg_scale": "guidance_scale", "guidance": "guidance_scale",
}
GROUPS = ("experiment", "model", "debug")  # groups that can change which method (keys) a job gets
_METHOD_KEY = re.compile(r"^method\.([A-Za-z_]\w*)=")


def _compose(overrides: list[str]):
    from hydra import compose, initialize_config_dir

    from bench.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides, return_hydra_config=True)


def _overrides(argv: Iterable[str]) -> tuple[list[str] | None, list[str]]:
    """(the methods named on the command line or None, single-valued overrides of GROUPS)."""
    methods, groups = None, []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if not sep or arg.startswith("-"):
            continue
        if name == "method":
            methods = value.split(",")
        elif name in GROUPS:
            groups.append(f"{name}={value.split(',')[0]}")
    return methods, groups


def unknown_key_message(method: str, key: str, valid: list[str]) -> str:
    hint = (f" The shared name is `{SHARED_NAMES[key]}`: method.{SHARED_NAMES[key]}=..."
            if SHARED_NAMES.get(key) in valid else "")
    return (f"method {method!r} has no hyperparameter {key!r} (override method.{key}).{hint}\n"
            f"  its keys: {', '.join(valid)} (bench --cfg job method={method} prints them with values)")


def method_keys(method: str, groups: list[str]) -> list[str]:
    cfg = _compose(groups + [f"method={method}"])
    return sorted(k for k in cfg.method if k != "_target_")


def check_method_overrides(argv: list[str]) -> None:
    """Exit 2 with a message naming the method's keys when a ``method.<key>=`` override names no key."""
    keys = [m.group(1) for arg in argv if (m := _METHOD_KEY.match(arg))]
    if not keys:
        return
    methods, groups = _overrides(argv)
    try:
        if methods is None:  # the experiment's sweep, else the default method
            cfg = _compose(groups)
            swept = cfg.hydra.sweeper.get("params", {}) or {}
            methods = str(swept["method"]).split(",") if "method" in swept else [cfg.hydra.runtime.choices.method]
        problems = [unknown_key_message(m, k, valid) for m in methods
                    for valid in [method_keys(m.strip(), groups)] for k in keys if k not in valid]
    except Exception:  # a config Hydra cannot compose: Hydra reports that itself
        return
    if problems:
        print("error: " + "\n".join(problems), file=sys.stderr)
        sys.exit(2)
