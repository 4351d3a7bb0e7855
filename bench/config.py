"""Config helpers: the one place that calls ``hydra.utils.instantiate`` (so adopting Hydra 1.4's
``_target_`` allow-list later is a one-line change), with errors that name the culprit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
ALLOWED_TARGET_PREFIXES = ("bench.", "methods.")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the group, key and value."""


def instantiate(config: dict[str, Any], what: str) -> Any:
    """Instantiate a ``_target_`` config; ``what`` names the config group in error messages."""
    from hydra.utils import instantiate as hydra_instantiate

    target = config.get("_target_")
    if not target:
        raise ConfigError(f"{what} config has no _target_: {config}")
    if not str(target).startswith(ALLOWED_TARGET_PREFIXES):
        raise ConfigError(f"{what}._target_={target!r}: only classes under {ALLOWED_TARGET_PREFIXES} are allowed")
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
    """The options of a config group = the yaml files in conf/<group>/ (the registry)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))
