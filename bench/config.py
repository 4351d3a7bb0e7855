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


def check_dotted_path(dotted: Any, where: str) -> str:
    """The allow-list every dotted path taken from config passes (``_target_``, ``model.build``):
    only objects under ``bench.`` and ``methods.``, so a config cannot run ``os:system``."""
    if not isinstance(dotted, str) or not dotted.startswith(ALLOWED_TARGET_PREFIXES):
        raise ConfigError(f"{where}={dotted!r}: only objects under {ALLOWED_TARGET_PREFIXES} are allowed")
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


def group_options(group: str) -> list[str]:
    """The options of a config group = the yaml files in conf/<group>/ (the registry)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))
