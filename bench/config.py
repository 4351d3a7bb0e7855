"""Config helpers: the one place that calls ``hydra.utils.instantiate`` (so adopting Hydra 1.4's
``_target_`` allow-list later is a one-line change), with errors that name the culprit.

User config dirs: ``$EDITBENCH_CONFIG_DIR`` names one or more directories (``os.pathsep``-separated)
laid out like ``conf/`` (``method/<name>.yaml``, ``method_model/<name>_<model>.yaml``, ...). They are
appended to Hydra's search path (``hydra.searchpath`` in conf/config.yaml resolves
``${editbench_user_config_dirs:}``), listed by ``bench ls``, and Python modules placed directly in
them may be ``_target_``s (docs/adding-a-method.md). A packaged config of the same name wins.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
ALLOWED_TARGET_PREFIXES = ("bench.", "methods.")
USER_CONFIG_ENV = "EDITBENCH_CONFIG_DIR"


class ConfigError(ValueError):
    """A config that cannot be used; the message names the group, key and value."""


def user_config_dirs() -> list[Path]:
    """The directories named by $EDITBENCH_CONFIG_DIR, in order (each must exist)."""
    raw = os.environ.get(USER_CONFIG_ENV, "")
    dirs = [Path(entry).expanduser().resolve() for entry in raw.split(os.pathsep) if entry]
    for directory in dirs:
        if not directory.is_dir():
            raise ConfigError(f"{USER_CONFIG_ENV}={raw!r}: {directory} is not a directory (expected a folder laid "
                              "out like conf/, e.g. <dir>/method/<name>.yaml)")
    return dirs


def config_dirs() -> list[Path]:
    """Where configs are looked up, in Hydra's order: the packaged conf/ first, then the user dirs."""
    return [CONF_DIR, *user_config_dirs()]


OmegaConf.register_new_resolver("editbench_user_config_dirs",
                                lambda: [f"file://{directory}" for directory in user_config_dirs()], replace=True)


def user_module(target: str) -> bool:
    """True when the top-level module of ``target`` is a file or package directly in a user config dir
    (the dirs are put on sys.path so that Hydra can import it)."""
    dirs = user_config_dirs()
    for directory in dirs:
        if str(directory) not in sys.path:
            sys.path.append(str(directory))
    spec = importlib.util.find_spec(target.split(".", 1)[0])
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    return origin is not None and any(directory in origin.parents for directory in dirs)


def check_dotted_path(dotted: Any, where: str) -> str:
    """The allow-list every dotted path taken from config passes (``_target_``, ``model.build``):
    only objects under ``bench.`` and ``methods.`` (or in a user config dir's module), so a config cannot run ``os:system``."""
    if not isinstance(dotted, str) or not (dotted.startswith(ALLOWED_TARGET_PREFIXES) or user_module(dotted)):
        raise ConfigError(f"{where}={dotted!r}: only objects under {ALLOWED_TARGET_PREFIXES} or in a module placed "
                          f"in a user config dir (${USER_CONFIG_ENV}) are allowed")
    return dotted


def _check_nested_targets(value: Any, where: str) -> None:
    """Hydra instantiates nested ``_target_`` entries too: each one passes the allow-list."""
    if isinstance(value, dict):
        for key, child in value.items():
            if key == "_target_":
                check_dotted_path(child, f"{where}._target_")
            else:
                _check_nested_targets(child, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, child in enumerate(value):
            _check_nested_targets(child, f"{where}[{index}]")


def instantiate(config: dict[str, Any], what: str) -> Any:
    """Instantiate a ``_target_`` config; ``what`` names the config group in error messages."""
    from hydra.utils import instantiate as hydra_instantiate

    target = config.get("_target_")
    if not target:
        raise ConfigError(f"{what} config has no _target_: {config}")
    _check_nested_targets(config, what)
    try:
        return hydra_instantiate(config, _convert_="all")
    except InstantiationException as err:
        cause = err.__cause__ or err
        raise ConfigError(f"invalid {what} config ({target}): {type(cause).__name__}: {cause}") from cause


def to_plain(cfg: Any) -> Any:
    """An OmegaConf config as plain dicts/lists (interpolations resolved); anything else unchanged."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(cfg, (DictConfig, ListConfig)):
        return OmegaConf.to_container(cfg, resolve=True)
    return cfg


def group_options(group: str) -> list[str]:
    """The options of a config group = the yaml files in <dir>/<group>/ of every config dir (the registry)."""
    return sorted({p.stem for d in config_dirs() for p in (d / group).glob("*.yaml") if not p.stem.startswith("_")})


def config_file(group: str, name: str) -> Path:
    """The yaml Hydra picks for ``<group>=<name>`` (the first config dir that has it)."""
    for directory in config_dirs():
        path = directory / group / f"{name}.yaml"
        if path.is_file():
            return path
    raise ConfigError(f"{group}={name!r}: no {group}/{name}.yaml in {[str(d) for d in config_dirs()]}")


def job_choices(cfg: Any) -> dict[str, str]:
    """The job's config group choices (model, metrics, method_model, ...): from the running Hydra app, else
    from the composed config."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return dict(HydraConfig.get().runtime.choices)
    except ValueError:  # composed without a running Hydra app (tests, API use)
        return dict(OmegaConf.select(cfg, "hydra.runtime.choices", default=None) or {})
