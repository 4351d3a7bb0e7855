"""What a job did (``JobSummary``), written to its run dir as summary.json. A light module: a job that
fails before it starts records its error here without importing torch (bench/runner.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class JobSummary:
    ok: int = 0
    skipped: int = 0
    failed: int = 0
    inversions_computed: int = 0
    inversions_loaded: int = 0
    nfe: int = 0
    nfe_backward: int = 0
    seconds: float = 0.0
    failures: list[dict[str, str]] = field(default_factory=list)
    error: dict[str, str] | None = None  # a job that could not start (configuration error)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
