"""Number formatting shared by the tables, their statistics and the CLI."""

from __future__ import annotations

import math
import numbers
from typing import Any


def format_number(value: Any, digits: int = 4) -> str:
    if isinstance(value, str):
        return value
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "--"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Integral):
        return str(int(value))
    value = float(value)
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}"
