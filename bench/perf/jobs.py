"""Running one edit item through the harness's own runner (``bench.edit_job.EditJob``), as a sweep does."""

from __future__ import annotations

from pathlib import Path

from bench import records
from bench.data.base import Dataset
from bench.data.item import EditItem
from bench.edit_job import EditJob, JobSummary


class ItemsDataset(Dataset):
    """A fixed list of items (the perf item), named so records say where they came from."""

    name = "perf"
    version = "1"

    def __init__(self, items: list[EditItem]) -> None:
        self._items = list(items)

    def items(self) -> list[EditItem]:
        return list(self._items)


def run_job(pipe, spec, items: list[EditItem], results_dir: str | Path, seed: int = 0) -> tuple[JobSummary, list[dict]]:
    """One EditJob over ``items`` into ``results_dir``; raises if an item failed (with the recorded error)."""
    job = EditJob(pipe=pipe, method=spec.method, method_label=spec.label, scheduler_cfg=spec.scheduler_cfg,
                  dataset=ItemsDataset(items), items=items, results_dir=results_dir, seed=seed, progress=False)
    summary = job.run()
    if summary.failed:
        raise RuntimeError(f"{spec.label}: {summary.failed} item(s) failed in {results_dir}: {summary.failures}")
    found = [r for r in records.iter_edit_records(results_dir) if r.get("method", {}).get("label") == spec.label]
    return summary, found
