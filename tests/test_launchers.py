"""Launchers (conf/launcher/) and the multirun-end aggregation: a joblib multirun of 2 methods × 2 shards
merges into the same table as the sequential run; the SLURM/submitit configs compose with the fields a
cluster needs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO_ROOT, add_edit, compose_config, dataset_overrides, write_yaml_dataset
from PIL import Image

from bench import records
from bench.tables import summary_table

TWO_METHODS = ["method=sdedit,ddim"]  # two method configs that run on the tiny model with `num_steps`


def bench(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=600)


def comparable(table):
    """The table without wall-clock columns (timings differ between runs)."""
    return table.drop(columns=["s/item"]).sort_values(["method", "point"]).reset_index(drop=True)


@pytest.mark.slow  # two CLI multiruns (6 jobs): ~105 s on 2 shared cores
def test_joblib_multirun_over_methods_and_shards_merges_into_the_sequential_table(tmp_path):
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=2)
    # one intra-op thread in every job: CPU kernels reduce in thread-count-dependent order, and joblib
    # (loky) workers get fewer threads than the sequential process
    common = ["model=tiny_random", "method.num_steps=3", *dataset_overrides(data), "runtime.progress=false",
              "runtime.num_threads=1"]
    parallel = bench(["-m", "launcher=joblib", "hydra.launcher.n_jobs=2", *common, *TWO_METHODS,
                      "dataset.num_shards=2", "dataset.shard=0,1", "tables=false",
                      f"paths.results_dir={tmp_path / 'parallel'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert parallel.returncode == 0, parallel.stderr[-3000:]
    # every job's own end line reaches the console (worker stdout is flushed) and Hydra's launcher INFO
    # lines do not (bench/quiet.py)
    assert parallel.stdout.count("done: ") == 4, parallel.stdout[-3000:]
    assert "[HYDRA]" not in parallel.stdout + parallel.stderr
    jobs = sorted((tmp_path / "sweep").glob("*/.hydra/hydra.yaml"))
    assert len(jobs) == 4  # 2 methods × 2 shards
    assert all(yaml.safe_load(job.read_text())["hydra"]["launcher"]["_target_"].endswith("JoblibLauncher")
               for job in jobs)
    # each job wrote per-item records only; the merged table comes from the multirun-end callback
    merged = tmp_path / "parallel" / "tables" / "summary.csv"
    assert merged.is_file() and (tmp_path / "parallel" / "report" / "index.html").is_file()

    sequential = bench(["-m", *common, *TWO_METHODS, f"paths.results_dir={tmp_path / 'sequential'}",
                        f"hydra.sweep.dir={tmp_path / 'sweep_seq'}"])
    assert sequential.returncode == 0, sequential.stderr[-3000:]
    a, b = summary_table(tmp_path / "parallel"), summary_table(tmp_path / "sequential")
    assert len(a) == 2 and list(a["n"]) == [2, 2]  # both shards of each method are in the one table
    # The images are compared pixel by pixel below. Metric values are float32 computations (relative rounding
    # ~6e-8 per operation) whose reduction order may differ between worker processes, and the table means
    # add them up in the order shards finish: equal to rtol 1e-6, not bit for bit.
    pd.testing.assert_frame_equal(comparable(a), comparable(b), check_exact=False, rtol=1e-6)
    keys = lambda root: sorted(r["key"] for r in records.iter_edit_records(root))  # noqa: E731
    assert keys(tmp_path / "parallel") == keys(tmp_path / "sequential")
    # Same keys ⇒ same computation; float32 rounding that differs between processes can move a pixel across
    # one 8-bit quantisation boundary, never further.
    pixels = lambda root: {p.name: np.asarray(Image.open(p), dtype=np.int16)  # noqa: E731
                           for p in sorted(root.glob("edits/*/*.png"))}
    parallel_pixels, sequential_pixels = pixels(tmp_path / "parallel"), pixels(tmp_path / "sequential")
    assert parallel_pixels.keys() == sequential_pixels.keys()
    for name, image in parallel_pixels.items():
        assert np.abs(image - sequential_pixels[name]).max() <= 1, name
    assert comparable(pd.read_csv(merged)).shape == comparable(b).shape


@pytest.mark.parametrize("launcher,target", [("joblib", "JoblibLauncher"), ("submitit_slurm", "SlurmLauncher"),
                                             ("submitit_local", "LocalLauncher"), ("local", "BasicLauncher")])
def test_launcher_configs_compose(launcher, target, tmp_path):
    cfg = compose_config([f"launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)
    if launcher == "submitit_slurm":
        launch = cfg.hydra.launcher
        assert launch.gpus_per_node == 1 and launch.timeout_min > 0 and launch.array_parallelism > 0
        assert "partition" in launch and launch.tasks_per_node == 1
        assert cfg.runtime.device == "cuda"
    assert cfg.hydra.callbacks.aggregate._target_ == "bench.callbacks.AggregateResults"


def test_slurm_sweep_with_shards_composes_with_an_experiment(tmp_path):
    cfg = compose_config(["experiment=ef_ddpm_tradeoff_ti2i", "launcher=submitit_slurm", "dataset.num_shards=8",
                          "hydra.launcher.partition=gpu"], tmp_path)
    assert cfg.hydra.launcher.partition == "gpu" and cfg.dataset.num_shards == 8
    assert cfg.hydra.launcher.name == "editbench-ef_ddpm_tradeoff_ti2i"


def test_callback_aggregates_every_results_dir_of_the_sweep(tmp_path):
    """The callback reads each job's saved config for its results dir (jobs may write to different ones)."""
    from omegaconf import OmegaConf

    from bench.callbacks import AggregateResults, job_results_dirs

    for n, run in enumerate(["a", "b"]):
        add_edit(tmp_path / run, f"k{n}", "sdedit", "img0/0")
        job = tmp_path / "sweep" / str(n) / ".hydra"
        job.mkdir(parents=True)
        (job / "config.yaml").write_text(f"paths:\n  results_dir: {tmp_path / run}\n")
    assert job_results_dirs(tmp_path / "sweep") == [tmp_path / "a", tmp_path / "b"]
    config = OmegaConf.create({"paths": {"results_dir": str(tmp_path / "a")},
                               "hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}})
    AggregateResults().on_multirun_end(config)
    for run in ("a", "b"):
        assert (tmp_path / run / "tables" / "summary.md").is_file()
        assert (tmp_path / run / "report" / "index.html").is_file()


@pytest.mark.slow
def test_submitit_local_sweep_runs_and_merges(tmp_path):
    """The SLURM code path (pickled jobs, submitit folders) on this machine, 2 jobs, merged at the end."""
    data = write_yaml_dataset((tmp_path / "data").mkdir() or tmp_path / "data", n_images=1)
    result = bench(["-m", "launcher=submitit_local", "model=tiny_random", "method=sdedit", "method.num_steps=3",
                    "method.strength=0.5,0.8", *dataset_overrides(data), "runtime.progress=false",
                    f"paths.results_dir={tmp_path / 'results'}", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # submitit's job folders
    assert sorted(summary_table(tmp_path / "results")["point"]) == ["strength=0.5", "strength=0.8"]
    assert (tmp_path / "results" / "report" / "index.html").is_file()
