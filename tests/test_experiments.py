"""Experiment configs (conf/experiment/*.yaml): every file composes and instantiates for every method of
its sweep (a referenced config that is missing fails the case, naming the file); the
trade-off grids resolve at every point; `debug=limit` shrinks any experiment; and experiments run end to
end on the tiny random model on CPU, producing tables, plot and report."""

from __future__ import annotations

import itertools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO_ROOT, SHARED_DATA, compose_config, write_imagenet_r_tree, write_pie_fixture

from bench import records
from bench.config import CONF_DIR, group_options
from bench.io import write_json
from bench.job_parts import dataset_from_config, method_from_config
from bench.tables import summary_table

# method × dataset edit sweeps; analysis experiments (an `analysis:` node, bench/analyses) are tested in
# tests/test_ef_analyses.py
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")
                     if "analysis" not in (yaml.safe_load(p.read_text()) or {}))
SWEEP_GROUP = re.compile(r"^\+?(experiment/\w+)@_global_$")


def experiment_yaml(name: str) -> dict:
    return yaml.safe_load((CONF_DIR / "experiment" / f"{name}.yaml").read_text())


def sweep_params(name: str) -> dict[str, str]:
    return dict(((experiment_yaml(name).get("hydra") or {}).get("sweeper") or {}).get("params") or {})


def method_axis(name: str) -> tuple[str, list[str]]:
    """(override key, options) of the experiment's method axis: `method` or a per-method config group."""
    for key, value in sweep_params(name).items():
        if key == "method" or SWEEP_GROUP.match(key):
            return key, [v.strip() for v in str(value).split(",")]
    raise AssertionError(f"experiment {name} sweeps no method axis: {sweep_params(name)}")


def referenced_configs(name: str, option: str) -> list[Path]:
    """Every config file the (experiment, method option) case needs."""
    needed = []

    def overrides_of(path: Path) -> None:
        for entry in (yaml.safe_load(path.read_text()) or {}).get("defaults") or []:
            if isinstance(entry, dict):
                for key, value in entry.items():
                    group = key.replace("override ", "").strip().lstrip("/")
                    if not group.startswith("hydra"):
                        needed.extend(CONF_DIR / group / f"{v}.yaml" for v in (value if isinstance(value, list) else [value]))

    overrides_of(CONF_DIR / "experiment" / f"{name}.yaml")
    key, _ = method_axis(name)
    if key == "method":
        needed.append(CONF_DIR / "method" / f"{option}.yaml")
    else:
        group_file = CONF_DIR / SWEEP_GROUP.match(key).group(1) / f"{option}.yaml"
        needed.append(group_file)
        if group_file.is_file():
            overrides_of(group_file)
    return needed


def method_override(name: str, option: str) -> str:
    key, _ = method_axis(name)
    return f"method={option}" if key == "method" else f"{key if key.startswith('+') else '+' + key}={option}"


def assert_references_exist(name: str, option: str) -> None:
    """A config the case references must exist: a deleted or misspelt one fails, naming the file."""
    missing = [str(p.relative_to(REPO_ROOT)) for p in referenced_configs(name, option) if not p.is_file()]
    assert not missing, f"experiment {name} / {option} references missing configs: {missing}"


CASES = [(name, option) for name in EXPERIMENTS for option in method_axis(name)[1]]


def test_the_published_evaluations_each_have_an_experiment():
    assert {"stylediffusion_table", "ef_ddpm_tradeoff_ti2i", "ef_ddpm_tradeoff_zero_shot", "pie_bench_table",
            "toy_default"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        text = (CONF_DIR / "experiment" / f"{name}.yaml").read_text()
        assert text.startswith("# @package _global_"), name
        assert experiment_yaml(name)["hydra"]["mode"] == "MULTIRUN", name  # one command runs the whole table
        assert experiment_yaml(name)["run_name"] == name, name  # its own results dir


@pytest.mark.parametrize("name,option", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_experiment_composes_and_instantiates(name, option, tmp_path):
    assert_references_exist(name, option)
    cfg = compose_config([f"experiment={name}", method_override(name, option)], tmp_path)
    assert cfg.run_name == name
    assert cfg.hydra.mode.name == "MULTIRUN"
    method, scheduler = method_from_config(cfg.method)
    choice = cfg.hydra.runtime.choices["method"]
    assert choice in group_options("method"), f"{name} / {option}: method={choice} is not a conf/method file"
    if method_axis(name)[0] == "method":
        assert choice == option
    assert scheduler["num_train_timesteps"] == 1000
    dataset, shard, num_shards = dataset_from_config(cfg.dataset)
    assert (shard, num_shards) == (0, 1) and dataset.name
    from bench.metrics.registry import metric_entries

    ids = [e["id"] if isinstance(e, dict) else e for e in metric_entries(cfg.metrics)]
    assert ids, f"{name} scores no metric"
    for paper in cfg.get("paper") or []:
        assert (REPO_ROOT / "results" / "paper" / f"{paper}.csv").is_file(), paper


TRADEOFF_CASES = [(name, option) for name, option in CASES if "tradeoff" in method_axis(name)[0]]


@pytest.mark.parametrize("name,option", TRADEOFF_CASES, ids=[f"{n}-{o}" for n, o in TRADEOFF_CASES])
def test_tradeoff_grid_resolves_at_every_point_and_contains_the_default(name, option, tmp_path):
    assert_references_exist(name, option)
    params = sweep_params(name)
    sizes = {axis: len(range(*map(int, re.match(r"range\((\d+),\s*(\d+)\)", params[f"tradeoff.{axis}"]).groups())))
             for axis in ("i", "j")}
    grid_file = yaml.safe_load((CONF_DIR / "experiment" / "tradeoff" / f"{option}.yaml").read_text())
    assert len(grid_file["tradeoff"]["i_values"]) == sizes["i"] and len(grid_file["tradeoff"]["j_values"]) == sizes["j"]
    knob_i, knob_j = grid_file["tradeoff"]["knobs"]
    from bench.presets import paper_defaults

    defaults = paper_defaults(option)
    assert defaults[knob_i] in grid_file["tradeoff"]["i_values"], f"{option}: paper default {knob_i} not on the grid"
    assert defaults[knob_j] in grid_file["tradeoff"]["j_values"], f"{option}: paper default {knob_j} not on the grid"
    seen = set()
    composed = compose_config([f"experiment={name}", method_override(name, option)], tmp_path)
    for i, j in itertools.product(range(sizes["i"]), range(sizes["j"])):
        cfg = composed.copy()  # = composing with tradeoff.i=i tradeoff.j=j (the grid is interpolated)
        cfg.tradeoff.i, cfg.tradeoff.j = i, j
        method, _ = method_from_config(cfg.method)  # validates the hyperparameters of every grid point
        hp = method.hparams()
        assert hp[knob_i] == grid_file["tradeoff"]["i_values"][i] and hp[knob_j] == grid_file["tradeoff"]["j_values"][j]
        seen.add(json.dumps(hp, sort_keys=True))
    assert len(seen) == sizes["i"] * sizes["j"]  # every point is a distinct job


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_debug_limit_shrinks_any_experiment(name, tmp_path):
    option = method_axis(name)[1][0]
    assert_references_exist(name, option)
    cfg = compose_config([f"experiment={name}", "debug=limit", method_override(name, option)], tmp_path)
    assert cfg.model.name == "tiny_random" and cfg.limit == 2 and cfg.runtime.device == "cpu"
    assert cfg.hydra.runtime.choices["metrics"] == "toy"
    assert list(cfg.metrics.ids) == ["lpips_alex", "clip_score", "structure_dist"]
    assert set(cfg.metrics.ids) <= set(cfg.metrics.registry)  # all on the toy evaluators, nothing to download
    preset = yaml.safe_load((CONF_DIR / "debug" / "limit.yaml").read_text())
    assert "/debug/${run_name}" in preset["paths"]["results_dir"]  # smoke runs never mix with real results


# ----------------------------------------------------------------------------------------------
# end to end on the tiny model

needs_zero_shot = pytest.mark.skipif(not (SHARED_DATA / "modified_zero_shot_i2it").is_dir(),
                                     reason="../shared/data/modified_zero_shot_i2it absent")


def fake_scores(results: Path) -> int:
    """Metric records for every ok edit (LPIPS grows and CLIP grows with the SDEdit strength), standing in
    for the metric stage, whose real backbones are not available offline."""
    n = 0
    for rec in records.iter_edit_records(results):
        if rec["status"] != "ok":
            continue
        strength = rec["method"]["hparams"].get("strength", 0.5)
        for metric_id, value, scale, higher in (("lpips_alex", 0.1 + strength / 2, 1.0, False),
                                                ("clip_score", 0.2 + strength / 10, 100.0, True)):
            write_json(records.metric_record_path(results, metric_id, rec["key"]),
                       {"edit_key": rec["key"], "metric_id": metric_id, "value": value, "display_scale": scale,
                        "higher_is_better": higher})
            n += 1
    return n


@pytest.mark.slow  # a CLI multirun + `bench report` in subprocesses; the in-process run of every experiment stays
@needs_zero_shot
def test_tradeoff_experiment_multirun_end_to_end_on_tiny_model(tmp_path):
    """`bench experiment=ef_ddpm_tradeoff_zero_shot debug=limit` restricted to 2 SDEdit grid points × 1 item:
    the multirun writes records, the multirun-end callback merges tables and report; `bench report` adds
    the CLIP-vs-LPIPS plot once scores exist."""
    results = tmp_path / "results"
    args = ["experiment=ef_ddpm_tradeoff_zero_shot", "debug=limit", "limit=1", "metrics.ids=[]",
            "+experiment/tradeoff@_global_=sdedit", "tradeoff.i=3,4", "tradeoff.j=1",
            "method.num_steps=4", f"paths.results_dir={results}", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    run = subprocess.run([sys.executable, "-m", "bench.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir() if p.is_dir()) == ["0", "1"]  # two jobs
    table = summary_table(results)
    assert sorted(table["point"]) == ["strength=0.8", "strength=1.0"] and list(table["n"]) == [1, 1]
    assert set(table["method"]) == {"sdedit"}
    assert "strength=0.8" in (results / "tables" / "summary.md").read_text()
    report = (results / "report" / "index.html").read_text()  # written by the multirun-end callback
    assert "ef_ddpm_tradeoff_zero_shot" in report and "tradeoff.i=3" in report  # config + overrides shown
    assert "a photo of a cat" in report

    assert fake_scores(results) == 4
    again = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(results)], cwd=REPO_ROOT,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert (results / "plots" / "tradeoff.png").stat().st_size > 1000 and (results / "plots" / "tradeoff.pdf").is_file()
    assert "lpips_alex ↓" in (results / "tables" / "summary.md").read_text()
    assert "CLIP vs LPIPS" in (results / "report" / "index.html").read_text()


def experiment_dataset(name: str) -> str:
    for entry in experiment_yaml(name).get("defaults") or []:
        if isinstance(entry, dict) and "override /dataset" in entry:
            return entry["override /dataset"]
    raise AssertionError(f"experiment {name} does not choose a dataset")


def stand_in_data(dataset: str, tmp_path: Path) -> list[str]:
    """Overrides pointing a dataset that cannot be fetched offline (ImageNet-R, user-supplied PIE-Bench) at
    a stand-in written in its real on-disk format, so the experiment runs through the real loader."""
    if dataset == "imagenet_r_ti2i":
        root = write_imagenet_r_tree(tmp_path / "imagenet_r")
        return [f"dataset.user_root={root}", f"dataset.data_dir={tmp_path / 'empty_cache'}"]
    if dataset == "pie_bench":
        write_pie_fixture(tmp_path / "pie_bench", height=24, width=32)
        return [f"dataset.root={tmp_path / 'pie_bench'}", "dataset.mask_shape=[24,32]",
                f"dataset.mask_cache_dir={tmp_path / 'pie_masks'}",
                "metrics.ids=[lpips_alex,clip_score,structure_dist,bg_psnr_pie]"]  # + a masked PIE metric
    return []


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_end_to_end_with_debug_limit(name, tmp_path):
    """Each experiment, one SDEdit job at debug size with the toy metrics: records, metric scores, tables,
    plot and report (in-process, like `bench experiment=<name> debug=limit`). Datasets that cannot be
    fetched offline are replaced by stand-ins in their own format."""
    from bench.callbacks import aggregate
    from bench.runner import run_from_config

    option = "sdedit"
    if option not in method_axis(name)[1]:
        pytest.skip(f"{name} has no sdedit job")
    assert_references_exist(name, option)
    dataset = experiment_dataset(name)
    if dataset == "zero_shot_i2it" and not (SHARED_DATA / "modified_zero_shot_i2it").is_dir():
        pytest.skip("../shared/data/modified_zero_shot_i2it absent")
    cfg = compose_config([f"experiment={name}", "debug=limit", "limit=1", method_override(name, option),
                          "method.num_steps=4", *stand_in_data(dataset, tmp_path)], tmp_path / "results")
    summary = run_from_config(cfg)
    assert summary.ok == 1, summary.failures
    written = aggregate(tmp_path / "results", papers=list(cfg.get("paper") or []))
    assert written["tables"]["md"].is_file() and written["report"].is_file()
    table = summary_table(tmp_path / "results")
    assert any(c.endswith("↑") and c != "psnr_vs_source ↑" or c.endswith("↓") for c in table.columns)
    if "lpips_alex" in set(cfg.metrics.ids) and "clip_score" in set(cfg.metrics.ids):
        assert written["plots"]["png"].is_file()
    if dataset == "pie_bench":  # the masked background metric was scored on the decoded PIE-Bench mask
        assert table["bg_psnr_pie ↑"].notna().all()  # the mean (with 1 item its se is NaN)
