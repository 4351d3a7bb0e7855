"""Hash lock files: ``relative path → sha256`` maps learnt on first use, next to the files they describe.

Shared by ``bench.data.download`` (records hashes when it fetches) and ``bench.data.manifest``
(checks found files against them); neither imports the other for it.
"""

from __future__ import annotations

import os
from pathlib import Path

from bench.io import read_json, write_json

LOCK_NAME = "sha256.lock.json"


class LockFileError(RuntimeError):
    """A lock file that cannot be used; the message names it and says how to recover."""


class ShaLock:
    """A JSON map ``relative path → sha256`` written atomically next to the files it describes."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def read(self) -> dict[str, str]:
        if not self.path.is_file():
            return {}
        data = read_json(self.path)
        if not isinstance(data, dict):
            raise LockFileError(f"{self.path}: lock file is not a JSON object; delete it to re-learn the hashes")
        return data

    def get(self, key: str) -> str | None:
        return self.read().get(key)

    def set(self, key: str, sha256: str) -> None:
        data = self.read()
        data[key] = sha256
        write_json(self.path, data)


def lock_file(data_dir: str | os.PathLike, dataset_name: str) -> Path:
    """The sidecar lock of a dataset's download cache (``<data_dir>/<name>/sha256.lock.json``)."""
    return Path(data_dir) / dataset_name / LOCK_NAME
