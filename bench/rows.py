"""What one table row is, and which records count (docs/reliability.md, "What a table row is").

A row is one (dataset name + content id, model id + weights fingerprint + dtype, method label +
hyperparameter point); records that differ in any of these never share a row:

- dataset content id: a hash of the dataset's description minus its name (version, manifest or
  prompts-file sha256, selection parameters), so two folders both named ``folder``, or one folder
  before and after its prompts file changed, are separate rows, labelled ``name@<id>``;
- model: ``model_id@<fingerprint>/<dtype>``, labelled by model id alone when that is unambiguous.

Within a row, each (item, seed) counts once: the newest record wins (``created_at``). Older ones are
excluded and counted, with the reason: a failure followed by a success of the same item is
superseded; an older success (the item's image or prompts changed, or the method version was bumped)
is stale. "Best" marks compare rows of the same dataset and model only.
"""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from bench.hashing import content_key

log = logging.getLogger(__name__)

CONTEXT_COLUMNS = ("dataset", "model")  # rows are only compared (bolded) within one of these
UNIT_COLUMNS = ["dataset_id", "model_id", "method", "hparams", "item_id", "seed"]  # one counted record each


def record_identity(rec: dict[str, Any]) -> dict[str, Any]:
    """The row-identity fields of an edit record (old records without them get the same defaults)."""
    dataset = dict(rec.get("dataset") or {})
    content = content_key({k: v for k, v in dataset.items() if k != "name"}, 8)
    model = rec.get("model") or {}
    model_id = (f"{model.get('model_id', '')}@{str(model.get('weights_fingerprint', ''))[:8]}"
                f"/{model.get('dtype', '')}") if model else ""
    return {"dataset_name": dataset.get("name", ""), "dataset_id": f"{dataset.get('name', '')}@{content}",
            "model_id": model_id, "model_name": model.get("model_id", ""),
            "method_version": str(rec.get("method", {}).get("version", "")), "created_at": rec.get("created_at") or ""}


def _labels(frame: pd.DataFrame, full: str, short: str) -> pd.Series:
    """The short name where it names one identity, the full identity where the short name is ambiguous."""
    ambiguous = frame.groupby(short)[full].transform("nunique") > 1
    return frame[full].where(ambiguous, frame[short])


def add_row_labels(frame: pd.DataFrame) -> pd.DataFrame:
    """Display columns ``dataset`` and ``model`` (see the module docstring)."""
    ambiguous = sorted(set(frame.loc[frame.groupby("dataset_name")["dataset_id"].transform("nunique") > 1,
                                     "dataset_name"]))
    for name in ambiguous:
        log.warning("dataset %r has several contents in this results dir (%s): shown as separate rows; give each "
                    "its own dataset.name or results dir", name,
                    ", ".join(sorted(set(frame.loc[frame["dataset_name"] == name, "dataset_id"]))))
    return frame.assign(dataset=_labels(frame, "dataset_id", "dataset_name"), model=_labels(frame, "model_id",
                                                                                              "model_name"))


def split_current(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(records that count, records excluded with a ``reason`` column); one counted record per unit."""
    if frame.empty:
        return frame, frame.assign(reason=pd.Series(dtype=object))
    ordered = frame.sort_values("created_at", kind="stable")
    newest = ordered.groupby(UNIT_COLUMNS, sort=False, dropna=False).tail(1).index
    current, excluded = frame.loc[frame.index.isin(newest)], frame.loc[~frame.index.isin(newest)]
    winner = current.set_index(UNIT_COLUMNS)["status"]
    beaten_by = [winner.get(tuple(row[c] for c in UNIT_COLUMNS)) for _, row in excluded.iterrows()]
    reasons = ["failure superseded by a newer success" if status == "failed" and by == "ok" else
               f"stale: a newer {by} record of the same item (its image, prompts or method version changed)"
               for status, by in zip(excluded["status"], beaten_by)]
    if len(excluded):
        log.warning("%d record(s) excluded from the tables (superseded failures or stale results; see "
                    "tables/excluded.csv)", len(excluded))
    return current, excluded.assign(reason=reasons)


def row_index(frame: pd.DataFrame) -> list[str]:
    """The summary table's row index: dataset and model when the results hold more than one of them."""
    return [c for c in CONTEXT_COLUMNS if c in frame and frame[c].nunique() > 1] + ["method", "point"]


def comparable_groups(table: pd.DataFrame) -> list[list[int]]:
    """Row positions that may be compared with each other (same dataset and model)."""
    context = [c for c in CONTEXT_COLUMNS if c in table.columns]
    if not context:
        return [list(range(len(table)))]
    keys = table[context].astype(str).agg("\x00".join, axis=1).reset_index(drop=True)
    return [list(group.index) for _, group in keys.groupby(keys, sort=False)]
