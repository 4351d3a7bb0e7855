"""Item batching (``runtime.batch_size``): every method config gives the same images at B = 8 as at B = 1,
up to float rounding, and a re-run at another B recomputes nothing.

Tolerance. At B = 8 every UNet, VAE and text-encoder call carries eight items' rows, so its float32
reductions can be summed in another order than at B = 1: one call agrees to ~1e-6 relative. The tiny
schedules (2 steps) and guidance amplify that to well under 1e-4 of the image range, far below one 8-bit
level (1/255 of [0, 1] ≈ 4e-3); the saved PNGs truncate to 8 bits, so a value that lands on a level boundary
can still move by one level. Hence: every pixel within one level, and at most 1 % of the values moved.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from method_contract import method_spec
from PIL import Image

from bench import records
from bench.config import group_options
from bench.data.item import EditItem
from bench.edit_job import EditJob
from bench.models import build_scheduler
from bench.perf.jobs import ItemsDataset
from bench.perf.setup import SOURCE_PROMPT, source_image_array

pytestmark = pytest.mark.usefixtures("one_thread")
TARGETS = ["a green circle on a blue background", "a yellow circle on a blue background"]


@pytest.fixture(scope="module")
def batch_items(contract_pipe, tmp_path_factory) -> list[EditItem]:
    """Eight items over four images (two edits per image share its inversion)."""
    directory = tmp_path_factory.mktemp("batch-items")
    items = []
    for index, (shift, target) in enumerate([(shift, target) for shift in (0, 9, 17, 30) for target in TARGETS]):
        path = directory / f"image{shift}.png"
        Image.fromarray(np.roll(source_image_array(contract_pipe.resolution), shift, axis=1)).save(path)
        items.append(EditItem(item_id=f"batch/{index}", image_id=f"image{shift}", image_path=str(path),
                              source_prompt=SOURCE_PROMPT, target_prompt=target,
                              blend_words=("circle", "circle"), edit_category="colour"))
    return items


def run(pipe, label: str, items: list[EditItem], results_dir, batch_size: int):
    spec = method_spec(label)
    pipe.scheduler = build_scheduler(spec.scheduler_cfg)
    return EditJob(pipe=pipe, method=spec.method, method_label=label, scheduler_cfg=spec.scheduler_cfg,
                   dataset=ItemsDataset(items), items=items, results_dir=results_dir, seed=0, progress=False,
                   batch_size=batch_size).run()


def images(results_dir) -> dict[str, np.ndarray]:
    return {rec["item"]["item_id"]: np.asarray(Image.open(results_dir / rec["files"]["edited"]), dtype=np.int16)
            for rec in records.iter_edit_records(results_dir) if rec["status"] == "ok"}


@pytest.mark.parametrize("label", group_options("method"))
def test_batched_items_equal_single_items(label, contract_pipe, batch_items, tmp_path):
    single = run(contract_pipe, label, batch_items, tmp_path / "b1", batch_size=1)
    batched = run(contract_pipe, label, batch_items, tmp_path / "b8", batch_size=8)
    assert single.failed == batched.failed, (single.failures, batched.failures)
    one, eight = images(tmp_path / "b1"), images(tmp_path / "b8")
    assert one.keys() == eight.keys() and len(one) == len(batch_items) - single.failed
    for item_id, image in one.items():
        moved = np.abs(image - eight[item_id])
        assert moved.max() <= 1 and (moved > 0).mean() <= 0.01, f"{label} {item_id}: max {moved.max()}"
    assert batched.inversions_computed == single.inversions_computed  # shared inversions stay shared

    again = run(contract_pipe, label, batch_items, tmp_path / "b1", batch_size=8)  # another B: nothing to do
    assert again.skipped == single.ok and again.nfe == 0 and again.inversions_computed == 0


def test_a_failing_item_fails_alone_in_its_batch(contract_pipe, batch_items, tmp_path):
    """An edit that raises inside a batch (pix2pix-zero has no sentence set for 'unicorn') is retried item
    by item: only that item is recorded as failed, its batch neighbours are edited."""
    broken = dataclasses.replace(batch_items[1], item_id="batch/broken", blend_words=("circle", "unicorn"))
    summary = run(contract_pipe, "pix2pix_zero", [batch_items[0], broken, batch_items[2]], tmp_path, batch_size=3)
    assert (summary.ok, summary.failed) == (2, 1), summary.failures
    assert summary.failures[0]["item"] == "batch/broken" and "unicorn" in summary.failures[0]["error"]
