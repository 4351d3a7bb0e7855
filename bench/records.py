"""Result records: one JSON file per edited item (and per metric score), written atomically.

Layout of a results directory (``paths.results_dir``)::

    edits/<method>/<key>.json        one record per (model, method+hparams, item, seed)
    edits/<method>/<key>.png         the edited image (model resolution)
    sources/<sha>_<res>.png          the preprocessed source exactly as fed to the model
    inversions/<method>/<key>.safetensors   cached inversions (reused by every edit point)
    metrics/<metric_id>/<key>.json   one score per (edit record, metric id+version)
    runs/<timestamp>_<pid>/          Hydra run dirs (config, overrides, run summary)
    tables/                          aggregated tables (markdown, CSV, LaTeX; excluded.csv: stale records)

An edit record (``status`` = "ok" or "failed") carries: key, inversion_key, method {name, version,
hparams, scheduler}, item (EditItem fields + image_sha256 + preprocess id), dataset {name, version},
seed, model {model_id, weights_fingerprint, dtype, device}, cost {nfe, nfe_backward, calls by batch,
seconds, inversion_seconds, inversion_cached, peak_memory_bytes}, files {edited, source} (relative to
the results dir), env {versions, git sha}, created_at, warnings (truncated prompts, a constant source
image), and for failures error {type, message, where}.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

from bench.io import TMP_MARK

log = logging.getLogger(__name__)

RECORD_SCHEMA = 1


def edit_record_path(results_dir: str | Path, method: str, key: str) -> Path:
    return Path(results_dir) / "edits" / method / f"{key}.json"


def edit_image_path(results_dir: str | Path, method: str, key: str) -> Path:
    return Path(results_dir) / "edits" / method / f"{key}.png"


def inversion_path(results_dir: str | Path, method: str, key: str) -> Path:
    return Path(results_dir) / "inversions" / method / f"{key}.safetensors"


def source_image_path(results_dir: str | Path, image_sha256: str, resolution: int) -> Path:
    return Path(results_dir) / "sources" / f"{image_sha256[:20]}_{resolution}.png"


def metric_record_path(results_dir: str | Path, metric_id: str, key: str) -> Path:
    return Path(results_dir) / "metrics" / metric_id / f"{key}.json"


def iter_json(directory: str | Path) -> Iterator[dict[str, Any]]:
    """Every complete JSON record under ``directory`` (temporary files of killed writers skipped)."""
    root = Path(directory)
    if not root.is_dir():
        return
    for path in sorted(root.rglob("*.json")):
        if TMP_MARK in path.name:
            continue
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:  # cannot happen with atomic writes; say so if it does
            log.warning("skipping unreadable record %s: %s", path, err)


def iter_edit_records(results_dir: str | Path) -> Iterator[dict[str, Any]]:
    yield from iter_json(Path(results_dir) / "edits")


def iter_metric_records(results_dir: str | Path) -> Iterator[dict[str, Any]]:
    yield from iter_json(Path(results_dir) / "metrics")


def read_record(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))
