"""Readable ablations: the paper defaults and the per-model preset travel in every record, tables show
every value that differs from the paper, swept points sort numerically, and the plot's star says what
it marks."""

from __future__ import annotations

import json

import pandas as pd
from test_tables import add_edit, add_metric

from bench import records
from bench.io import write_json
from bench.plots import star_meaning
from bench.presets import method_provenance, order_points
from bench.tables import CHANGED_COLUMN, default_points, load_edits, summary_table, to_markdown


def test_points_sort_numerically_not_as_text():
    table = pd.DataFrame({"method": ["ef", "ef", "ef", "sd"], "point": ["skip=10", "skip=5", "skip=36", "default"]})
    assert list(order_points(table)["point"]) == ["skip=5", "skip=10", "skip=36", "default"]
    two = pd.DataFrame({"method": ["m"] * 3, "point": ["a=10, b=1", "a=5, b=2", "a=5, b=10"]})
    assert list(order_points(two)["point"]) == ["a=5, b=2", "a=5, b=10", "a=10, b=1"]


def test_method_provenance_names_the_preset_and_the_papers_values():
    from hydra import compose, initialize_config_dir

    from bench.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["method=ef_ddpm", "model=toy"], return_hydra_config=True)
    meta = method_provenance(cfg, "ef_ddpm")
    assert meta["preset"] == "ef_ddpm_toy"
    # conf/method/ef_ddpm.yaml, not the toy preset's 25 steps / 7.5 nor the job's values
    assert meta["paper_defaults"]["num_steps"] == 100 and meta["paper_defaults"]["guidance_scale"] == 15.0
    assert cfg.method.num_steps == 25


def _sweep(root, skips=(10, 5)):
    """A 2-point EF sweep on the toy preset: neither skip is the paper's 36."""
    paper = {"num_steps": 100, "guidance_scale": 15.0, "skip": 36, "eta": 1.0}
    for skip in skips:
        for i in range(2):
            key = f"ef-{skip}-{i}"
            add_edit(root, key, "ef_ddpm", f"img{i}/0", hparams={"num_steps": 25, "guidance_scale": 7.5, "skip": skip,
                                                                  "eta": 1.0})
            path = records.edit_record_path(root, "ef_ddpm", key)
            rec = json.loads(path.read_text())
            rec["method"].update(preset="ef_ddpm_toy", paper_defaults=paper)
            write_json(path, rec)
            add_metric(root, key, "lpips_alex", 0.1 + skip / 100, higher=False)
            add_metric(root, key, "clip_score", 0.2 + skip / 1000, scale=100)


def test_tables_show_every_value_that_differs_from_the_paper(tmp_path):
    _sweep(tmp_path)
    table = summary_table(tmp_path)
    assert list(table["point"]) == ["skip=5", "skip=10"]
    assert list(table[CHANGED_COLUMN]) == ["guidance_scale=7.5, num_steps=25, skip=5 [ef_ddpm_toy]",
                                           "guidance_scale=7.5, num_steps=25, skip=10 [ef_ddpm_toy]"]
    assert "eta" not in table[CHANGED_COLUMN].iloc[0]  # the paper's value: not listed
    assert "skip=5 [ef_ddpm_toy]" in to_markdown(table)
    edits = load_edits(tmp_path)
    assert default_points(edits) == {}  # paper skip 36 is not on this grid: no point is starred
    assert star_meaning(edits, default_points(edits)) == ""


def test_star_says_paper_default_only_for_the_papers_values(tmp_path):
    _sweep(tmp_path, skips=(36, 10))
    edits = load_edits(tmp_path)
    assert default_points(edits) == {"ef_ddpm": "skip=36"}
    assert star_meaning(edits, default_points(edits)) == "★ = config default (≠ paper: see table)"  # 25 steps, 7.5
