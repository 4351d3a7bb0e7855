"""docs/methods.md's preset table is generated from the presets (bench/preset_table.py) and up to date; every
preset key names its source in a form the generator accepts."""

from __future__ import annotations

import pytest

from bench import preset_table
from bench.config import CONF_DIR


def test_docs_preset_table_is_regenerated_identically():
    assert preset_table.render(preset_table.all_rows()) == preset_table.current_table(), \
        "docs/methods.md preset table is stale: run `bench docs presets --write`"


def test_every_preset_and_toy_preset_is_in_the_table():
    presets = {r.preset for r in preset_table.all_rows()}
    files = {p.stem for group in ("method", "method_model") for p in (CONF_DIR / group).glob("*.yaml")}
    assert presets == files
    toy = [r for r in preset_table.all_rows() if r.preset.endswith("_toy")]
    assert toy and all(r.mark == "deviation" for r in toy)


@pytest.mark.parametrize("comment,error", [
    ("num_steps 50", "no ' | <source>' part"),
    ("x | somewhere", "neither"),
    ("x | cure-lab/PnPInversion@f480116 run_editing_p2p.py", "neither"),  # a code file needs a line
])
def test_sources_must_be_reference_lines_or_marked(comment, error):
    with pytest.raises(preset_table.PresetSourceError, match=error):
        preset_table.parse_comment(comment, "conf/method/x.yaml:1")


def test_accepted_source_forms():
    assert preset_table.parse_comment("a | owner/repo@abc123 path/f.py:12-14,20", "w")[2] == ""
    assert preset_table.parse_comment("a | owner/repo@abc123 README.md", "w")[2] == ""
    assert preset_table.parse_comment("a | deviation: toy budget", "w")[2] == "deviation"
    with pytest.raises(preset_table.PresetSourceError, match="must be marked 'deviation"):
        preset_table.parse_comment("a | owner/repo@abc README.md", "w", deviation_only=True)


def test_the_table_marks_deviations_and_ambiguities(tmp_path):
    (tmp_path / "method").mkdir()
    (tmp_path / "method_model").mkdir()
    (tmp_path / "method" / "m.yaml").write_text(
        "defaults:\n  - /scheduler@scheduler: s0 # hand-built | o/r@1 a.py:3\n\n_target_: x.Y\n"
        "a: 1 # ref_a = 1 | o/r@1 a.py:4\nb: [1, 2] # ref b | ambiguous: two copies differ\n")
    (tmp_path / "method_model" / "m_toy.yaml").write_text("# @package method\na: 2 # 1 on SD | deviation: budget\n")
    rows = preset_table.all_rows(tmp_path)
    assert [(r.preset, r.key, r.value, r.mark) for r in rows] == [
        ("m", "scheduler", "s0", ""), ("m", "a", "1", ""), ("m", "b", "[1, 2]", "ambiguous"), ("m_toy", "a", "2", "deviation")]
    table = preset_table.render(rows)
    assert "| `m` | `b` | `[1, 2]` | ref b | **ambiguous**: two copies differ |" in table
