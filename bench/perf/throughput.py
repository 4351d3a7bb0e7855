"""Items per second at several item batch sizes B (``runtime.batch_size``), measured in one run.

For each B the same ``count`` items (distinct images, so every item has its own inversion) run through
the harness's own ``EditJob`` into a fresh results dir; items/s = count / wall seconds of the job. The
ratio to B = 1 is the gain of item batching on this machine (measured in the same process, so machine
load affects all B alike as far as possible; the B values are run in alternating rounds, fastest kept).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from bench.data.item import EditItem
from bench.edit_job import EditJob
from bench.perf.jobs import ItemsDataset
from bench.perf.setup import SOURCE_PROMPT, TARGET_PROMPT, source_image_array

DEFAULT_BATCH_SIZES = (1, 4, 16)


@dataclass
class Throughput:
    label: str
    items: int
    items_per_second: dict[int, float]  # B → items/s
    error: str | None = None

    def speedup(self, batch_size: int) -> float:
        return self.items_per_second[batch_size] / self.items_per_second[min(self.items_per_second)]

    def as_dict(self) -> dict:
        return {"label": self.label, "items": self.items, "error": self.error,
                "items_per_second": {str(b): v for b, v in self.items_per_second.items()}}


def throughput_items(directory: Path, resolution: int, count: int) -> list[EditItem]:
    """``count`` items over ``count`` distinct images (the perf scene, shifted)."""
    directory.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(count):
        path = directory / f"throughput_{resolution}_{index}.png"
        Image.fromarray(np.roll(source_image_array(resolution), 3 * index, axis=1)).save(path)
        items.append(EditItem(item_id=f"throughput/{index}", image_id=f"throughput{index}", image_path=str(path),
                              source_prompt=SOURCE_PROMPT, target_prompt=TARGET_PROMPT,
                              blend_words=("circle", "circle"), edit_category="colour"))
    return items


def measure_throughput(pipe, spec, work_dir: Path, batch_sizes=DEFAULT_BATCH_SIZES, count: int = 16,
                       rounds: int = 1, seed: int = 0) -> Throughput:
    """items/s of ``spec`` at each B (fastest of ``rounds`` alternated rounds)."""
    from bench.models import build_scheduler

    items = throughput_items(work_dir / "throughput-data", pipe.resolution, count)
    pipe.scheduler = build_scheduler(spec.scheduler_cfg)
    best: dict[int, float] = {}
    for _ in range(max(1, rounds)):
        for batch_size in batch_sizes:
            results_dir = work_dir / f"throughput-{spec.label}-{batch_size}"
            shutil.rmtree(results_dir, ignore_errors=True)
            job = EditJob(pipe=pipe, method=spec.method, method_label=spec.label, scheduler_cfg=spec.scheduler_cfg,
                          dataset=ItemsDataset(items), items=items, results_dir=results_dir, seed=seed,
                          progress=False, batch_size=batch_size)
            start = time.perf_counter()
            summary = job.run()
            wall = time.perf_counter() - start
            if summary.failed:
                raise RuntimeError(f"{spec.label} at B={batch_size}: {summary.failures}")
            best[batch_size] = max(best.get(batch_size, 0.0), count / wall)
            shutil.rmtree(results_dir, ignore_errors=True)
    return Throughput(spec.label, count, best)
