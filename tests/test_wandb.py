"""W&B mirror (`logger=wandb`): offline runs written next to the results are read back (config, per-item
table, images, tables artifact); `disabled` writes nothing; the run is finished even when logging fails;
the runner calls the hook. No network: offline and disabled modes only."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from conftest import add_metric, compose_config, dataset_overrides, write_yaml_dataset

from bench.runner import run_from_config

FAST = ["model=tiny_random", "method=sdedit", "method.num_steps=3"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """One finished tiny job (2 items) with a metric score per item; returns (data dir, results dir)."""
    root = tmp_path_factory.mktemp("wandb_job")
    data = write_yaml_dataset((root / "data").mkdir() or root / "data", n_images=2)
    results = root / "results"
    run_from_config(compose_config(FAST + dataset_overrides(data), results))
    from bench import records

    for n, rec in enumerate(records.iter_edit_records(results)):
        add_metric(results, rec["key"], "lpips_alex", 0.25 + n / 10, higher=False)
    return data, results


@pytest.fixture(autouse=True)
def wandb_dirs(tmp_path, monkeypatch):
    """Keep W&B's staging/cache out of the home directory; never online."""
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_MODE", "offline")


def wandb_cfg(job, tmp_path, *extra):
    data, results = job
    return compose_config(FAST + dataset_overrides(data) + ["logger=wandb", f"logger.dir={tmp_path / 'wb'}",
                                                            "run_name=wb_test", *extra], results)


def log_results(cfg, results: Path, summary: dict):
    """What the runner does after a job: instantiate ``cfg.logger`` and hand it the job's records."""
    from omegaconf import OmegaConf

    from bench import records
    from bench.config import instantiate

    logger_cfg = OmegaConf.to_container(cfg.logger, resolve=True)
    if not logger_cfg.get("_target_"):
        return None
    return instantiate(logger_cfg, what="logger").log_job(config=cfg, label="sdedit", results_dir=results,
                                                          summary=summary,
                                                          records=list(records.iter_edit_records(results)))


def only_run_dir(root: Path) -> Path:
    runs = sorted((root / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    return runs[0]


def test_offline_run_holds_config_table_images_and_artifact(job, tmp_path):
    _, results = job
    log_results(wandb_cfg(job, tmp_path, "logger.mode=offline"), results, {"ok": 2, "failed": 0})
    run_dir = only_run_dir(tmp_path / "wb")
    files = run_dir / "files"
    config = yaml.safe_load((files / "editbench_config.yaml").read_text())
    assert config["method"]["_target_"] == "methods.sdedit.SDEdit" and config["run_name"] == "wb_test"
    assert "hydra" not in config and config["paths"]["results_dir"] == str(results)  # resolved
    tables = list((files / "media" / "table").glob("edits_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    columns = table["columns"]
    assert {"item_id", "source", "edited", "psnr_vs_source", "lpips_alex"} <= set(columns)
    assert len(table["data"]) == 2
    rows = [dict(zip(columns, row)) for row in table["data"]]
    assert sorted(r["item_id"] for r in rows) == ["img_0/0", "img_1/0"]
    assert sorted(r["lpips_alex"] for r in rows) == pytest.approx([0.25, 0.35])
    images = list((files / "media" / "images").glob("*.png"))
    assert len(images) == 2 and all(p.stat().st_size > 0 for p in images)
    log_bytes = wandb_log_bytes(run_dir, [b"tables-wb_test", b"eval_results", b"metrics/lpips_alex"])
    assert b"tables-wb_test" in log_bytes and b"eval_results" in log_bytes  # the tables artifact
    assert b"metrics/lpips_alex" in log_bytes  # summary metric


def wandb_log_bytes(run_dir, markers: list[bytes], timeout: float = 30.0) -> bytes:
    """The offline run's transaction log once it holds ``markers``: wandb's service process may still be
    writing it when ``finish`` has returned (seen on a loaded machine); waits at most ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        log_bytes = next(run_dir.glob("run-*.wandb")).read_bytes()
        if all(marker in log_bytes for marker in markers) or time.monotonic() > deadline:
            return log_bytes
        time.sleep(0.2)


def test_disabled_mode_writes_nothing(job, tmp_path):
    _, results = job
    log_results(wandb_cfg(job, tmp_path, "logger.mode=disabled"), results, {"ok": 2})
    assert not (tmp_path / "wb" / "wandb").exists()


def test_logger_none_is_a_no_op(job, tmp_path):
    data, results = job
    assert log_results(compose_config(FAST + dataset_overrides(data), results), results, {}) is None


def test_run_is_finished_when_logging_fails(job, tmp_path, monkeypatch):
    import wandb

    import bench.wandb_logger as wl

    finished = []
    original = wandb.Run.finish

    def spy(self, exit_code=None, *args, **kwargs):
        finished.append(exit_code)
        return original(self, exit_code, *args, **kwargs)

    def broken(*args, **kwargs):
        raise OSError("disk gone")

    monkeypatch.setattr(wandb.Run, "finish", spy)
    monkeypatch.setattr(wl, "build_table", broken)
    _, results = job
    with pytest.raises(wl.WandbLoggingError, match="disk gone"):
        log_results(wandb_cfg(job, tmp_path, "logger.mode=offline"), results, {"ok": 2})
    assert finished and finished[-1] == 1
    assert wandb.run is None  # nothing left open for the next job of a sweep


def test_runner_calls_the_hook(job, tmp_path):
    summary = run_from_config(wandb_cfg(job, tmp_path, "logger.mode=offline"))
    assert summary.skipped == 2  # nothing recomputed; the job is still mirrored
    run_dir = only_run_dir(tmp_path / "wb")
    table = json.loads(next((run_dir / "files" / "media" / "table").glob("edits_*.table.json")).read_text())
    assert len(table["data"]) == 2
