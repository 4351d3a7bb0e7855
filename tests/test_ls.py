"""`bench ls`: whole first sentences, singular group names, every metric id with direction and sets."""

from __future__ import annotations

import argparse

import yaml

from bench.commands import ls
from bench.config import CONF_DIR, group_options


def _run(what: str, capsys) -> str:
    assert ls.list_group(argparse.Namespace(what=what)) == 0
    return capsys.readouterr().out


def test_singular_and_plural_list_the_same(capsys):
    assert _run("method", capsys) == _run("methods", capsys)
    assert _run("model", capsys) == _run("models", capsys)


def test_every_description_is_a_whole_sentence(capsys):
    out = " ".join(_run("models", capsys).split())
    assert "sd15 Stable Diffusion v1.5" in out  # every model has a description
    for group in ("method", "model", "dataset", "experiment"):
        for name in group_options(group):
            summary = ls._summary(group, name)
            assert summary, f"conf/{group}/{name}.yaml has no description"
            # parentheses closed: the sentence was not cut inside one (comment lines are joined first)
            assert summary.count("(") == summary.count(")"), (group, name, summary)
    assert ls.first_sentence("A (b. c) d. E") == "A (b. c) d."


def test_ls_metrics_lists_every_metric_id_with_direction_and_sets(capsys):
    out = _run("metrics", capsys)
    ids = set()
    for metric_set in group_options("metrics"):
        registry = (yaml.safe_load((CONF_DIR / "metrics" / f"{metric_set}.yaml").read_text()) or {}).get("registry")
        ids |= set(registry or {})
    rows = {row["id"]: row for row in ls.metric_rows()}
    assert set(rows) == ids
    assert rows["lpips_alex"]["direction"] == "↓" and rows["clip_score"]["direction"] == "↑"
    assert rows["structure_dist"]["scale"] == 1000 and rows["bg_psnr_pie"]["unit"] == "dB"
    assert rows["lpips_alex"]["sets"] == ["default", "toy"]
    assert all(" " in row["protocol"] for row in rows.values())  # a description, not the class-name fallback
    for metric_id in ids:
        assert metric_id in out
    assert "metric sets" in out and "toy_ground_truth" in out
