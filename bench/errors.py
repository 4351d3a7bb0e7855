"""User-facing errors: known error types print one clear message (no traceback) and exit 2.

This module imports nothing heavy (no torch): a job that fails its preflight is reported before any
network library is loaded (bench/preflight.py)."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from bench.config import ConfigError
from bench.data.item import ItemError


class ModelNotFoundError(RuntimeError):
    """Weights could not be resolved offline; the message says where we looked and how to pre-fetch."""


def user_errors() -> tuple[type[Exception], ...]:
    """The error types reported in one line. ``HyperparameterError`` lives in ``methods.base`` (which
    imports torch); none can have been raised before that module is imported, so it is added only then."""
    methods_base = sys.modules.get("methods.base")
    extra = (methods_base.HyperparameterError,) if methods_base is not None else ()
    return (ConfigError, ItemError, ModelNotFoundError, *extra)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except Exception as err:
        if not isinstance(err, user_errors()):
            raise
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
