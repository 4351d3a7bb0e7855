"""User-facing errors: known error types print one clear message (no traceback) and exit 2."""

from __future__ import annotations

import contextlib
import sys
from typing import Iterator

from bench.config import ConfigError
from bench.data.item import ItemError
from bench.models import ModelNotFoundError
from methods.base import HyperparameterError

USER_ERRORS = (ConfigError, ItemError, ModelNotFoundError, HyperparameterError)


@contextlib.contextmanager
def friendly_errors() -> Iterator[None]:
    try:
        yield
    except USER_ERRORS as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
