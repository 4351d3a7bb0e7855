"""The edit stage end to end on the tiny pipeline: records, cache/resume, failures, determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO_ROOT, SHARED_DATA, ListDataset, compose_config, dataset_overrides, write_yaml_dataset
from PIL import Image

from bench import records
from bench.data.item import EditItem
from bench.edit_job import EditJob
from bench.job_parts import method_from_config
from bench.runner import run_from_config
from bench.tables import load_edits, summary_table

FAST = ["model=tiny_random", "method=sdedit", "method.num_steps=4"]
needs_shared = pytest.mark.skipif(not (SHARED_DATA / "ef_ddpm_examples").is_dir(), reason="../shared/data absent")


def test_sdedit_job_writes_images_records_and_table_and_rerun_does_no_work(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=2, prompts_per_image=2)
    cfg = compose_config(FAST + dataset_overrides(data), tmp_path / "results")
    first = run_from_config(cfg)
    assert (first.ok, first.failed, first.skipped) == (4, 0, 0)
    assert first.inversions_computed == 2  # one per image, shared by its two target prompts
    assert first.nfe == 4 * 2 * int(4 * 0.8)  # items × CFG pair × int(N·strength) steps
    recs = list(records.iter_edit_records(tmp_path / "results"))
    assert len(recs) == 4 and all(r["status"] == "ok" for r in recs)
    for rec in recs:
        assert Image.open(tmp_path / "results" / rec["files"]["edited"]).size == (64, 64)
        assert rec["method"]["scheduler"]["steps_offset"] == 1
        assert rec["model"]["dtype"] == "float32" and rec["env"]["versions"]["diffusers"]
        assert rec["cost"]["edit_nfe"] == 2 * int(4 * 0.8)
    table = (tmp_path / "results" / "tables" / "summary.md").read_text()
    assert "sdedit" in table and "NFE/item" in table

    second = run_from_config(cfg)
    assert (second.ok, second.skipped, second.nfe, second.inversions_computed) == (0, 4, 0, 0)


def test_edit_hparam_change_reuses_cached_inversion_from_disk(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1)
    run_from_config(compose_config(FAST + dataset_overrides(data), tmp_path / "results"))
    other = run_from_config(compose_config(FAST + dataset_overrides(data) + ["method.strength=0.5"],
                                           tmp_path / "results"))
    assert (other.ok, other.inversions_computed, other.inversions_loaded) == (1, 0, 1)


def test_bad_items_are_recorded_as_failed_and_the_rest_finish(tmp_path, tiny_pipe):
    good = write_yaml_dataset(tmp_path, n_images=1) / "img_0.png"
    unreadable = tmp_path / "broken.jpg"
    unreadable.write_bytes(b"this is not a jpeg")
    items = [
        EditItem("missing", "missing", str(tmp_path / "nope.png"), "a cat", "a dog"),
        EditItem("unreadable", "unreadable", str(unreadable), "a cat", "a dog"),
        EditItem("empty_prompt", "good", str(good), "a cat", "   "),
        EditItem("good", "good", str(good), "a cat", "a dog"),
    ]
    method, scheduler_cfg = method_from_config({"_target_": "methods.sdedit.SDEdit", "num_steps": 3,
                                                "scheduler": {"steps_offset": 1}})
    job = EditJob(pipe=tiny_pipe, method=method, method_label="sdedit", scheduler_cfg=scheduler_cfg,
                  dataset=ListDataset(items), items=items, results_dir=tmp_path / "results", seed=0, progress=False)
    summary = job.run()
    assert (summary.ok, summary.failed) == (1, 3)
    errors = {f["item"]: f["error"] for f in summary.failures}
    assert "not found" in errors["missing"] and "nope.png" in errors["missing"]
    assert "not a readable image" in errors["unreadable"] and "broken.jpg" in errors["unreadable"]
    assert "target_prompt" in errors["empty_prompt"] and "empty" in errors["empty_prompt"]
    frame = load_edits(tmp_path / "results")
    assert sorted(frame[frame.status == "failed"].item_id) == ["empty_prompt", "missing", "unreadable"]
    assert summary_table(tmp_path / "results")["failed"].sum() == 3


def run_cli(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300, **kwargs)


def test_cli_errors_name_the_culprit(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1)
    # (the preflight of weights and data runs first, before the method is imported: give it its data)
    bad_value = run_cli(FAST + dataset_overrides(data) + [f"paths.results_dir={tmp_path}", "method.strength=1.5"])
    assert bad_value.returncode != 0 and "SDEdit.strength=1.5" in bad_value.stderr
    unknown = run_cli([f"paths.results_dir={tmp_path}", "method=no_such_method"])
    assert unknown.returncode != 0 and "no_such_method" in unknown.stderr and "sdedit" in unknown.stderr
    typo = run_cli([f"paths.results_dir={tmp_path}", "method.strenght=0.5"])
    assert typo.returncode != 0 and "strenght" in typo.stderr


def test_same_config_and_seed_give_byte_identical_pngs(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1, prompts_per_image=2)
    outputs = []
    for run in ("a", "b"):
        run_from_config(compose_config(FAST + dataset_overrides(data), tmp_path / run))
        pngs = sorted((tmp_path / run / "edits").rglob("*.png"))
        outputs.append({p.name: p.read_bytes() for p in pngs})
    assert len(outputs[0]) == 2 and outputs[0] == outputs[1]


def test_multirun_sweep_has_one_table_row_per_point(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1)
    result = run_cli(["-m", *FAST, *dataset_overrides(data), f"paths.results_dir={tmp_path / 'results'}",
                      "method.strength=0.5,0.8"])
    assert result.returncode == 0, result.stderr[-2000:]
    table = summary_table(tmp_path / "results")
    assert sorted(table["point"]) == ["strength=0.5", "strength=0.8"]
    assert (tmp_path / "results" / "tables" / "summary.md").is_file()


@pytest.mark.slow  # a killed CLI run of 10 items × 40 steps, then the resume: ~60 s
def test_sigkill_mid_sweep_then_resume_recomputes_nothing_finished(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=10)
    results = tmp_path / "results"
    args = ["model=tiny_random", "method=sdedit", "method.num_steps=40", "method.strength=1.0",
            *dataset_overrides(data), f"paths.results_dir={results}", "runtime.progress=false"]
    proc = subprocess.Popen([sys.executable, "-m", "bench.cli", *args], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kill_after = 3  # records written before the kill: mid-sweep, with items left to run (of 10)
    deadline = time.time() + 240
    edits = results / "edits" / "sdedit"
    while time.time() < deadline and len(list(edits.glob("*.json"))) < kill_after and proc.poll() is None:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in edits.glob("*.json")}
    assert 1 <= len(finished) < 10, "the kill should land mid-sweep"

    result = run_cli(args)
    assert result.returncode == 0, result.stderr[-2000:]
    recs = [json.loads(p.read_text()) for p in edits.glob("*.json")]
    assert sorted(r["item"]["item_id"] for r in recs) == sorted(f"img_{i}/0" for i in range(10))
    assert all(r["status"] == "ok" for r in recs)
    for png in edits.glob("*.png"):
        Image.open(png).verify()  # no truncated image
    assert not [p for p in results.rglob("*") if ".tmp-" in p.name]
    for name, (mtime, content) in finished.items():  # finished items were not recomputed
        assert (edits / name).stat().st_mtime_ns == mtime and (edits / name).read_bytes() == content
    summary = json.loads(sorted((results / "runs").glob("*/summary.json"))[-1].read_text())
    assert summary["skipped"] == len(finished) and summary["ok"] == 10 - len(finished)


@needs_shared
def test_ef_examples_from_shared_data(tmp_path):
    cfg = compose_config(FAST + ["dataset=ef_examples", "method.num_steps=2"], tmp_path)
    summary = run_from_config(cfg)
    assert (summary.ok, summary.failed) == (4, 0)
