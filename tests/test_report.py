"""The HTML report and the trade-off plot: content, self-containedness, `bench report`, and rendering in
headless Chromium (screenshot non-empty and not blank, no console errors). Chromium comes from Debian's
`chromium` package (`apt-get install -y chromium`); without it the rendering tests skip."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO_ROOT, add_edit, add_metric
from PIL import Image

from bench.plots import tradeoff_figure, write_tradeoff_plot
from bench.report import build_report, find_chromium, screenshot_report
from bench.tables import default_points, load_edits, summary_table

needs_chromium = pytest.mark.skipif(find_chromium() is None, reason="headless Chromium not installed "
                                    "(Debian: apt-get install -y chromium)")


@pytest.fixture
def results(tmp_path) -> Path:
    """sdedit over 3 strengths and ddim_p2p over 2 cross fractions, 2 items each, LPIPS + CLIP scores."""
    root = tmp_path / "results"
    grids = {"sdedit": ("strength", [0.5, 0.8, 1.0]), "ddim_p2p": ("cross_replace_steps", [0.4, 0.8])}
    for method, (knob, values) in grids.items():
        for v, value in enumerate(values):
            for i in range(2):
                key = f"{method}-{v}-{i}"
                add_edit(root, key, method, f"img{i}/0", hparams={knob: value, "num_steps": 4},
                         image=True)
                add_metric(root, key, "lpips_alex", 0.1 + value / 2 + i / 100, higher=False)
                add_metric(root, key, "clip_score", 0.2 + value / 10, scale=100)
    add_edit(root, "failed-one", "sdedit", "img7/0", hparams={"strength": 0.5, "num_steps": 4},
             status="failed")
    return root


def test_tradeoff_plot_one_curve_per_method_and_starred_default(results):
    edits = load_edits(results)
    table = summary_table(results, edits)
    defaults = default_points(edits)
    assert defaults == {"sdedit": "strength=0.8", "ddim_p2p": "cross_replace_steps=0.8"}  # the configs' values
    figure = tradeoff_figure(table, "lpips_alex ↓", "clip_score ×100 ↑", defaults)
    axes = figure.axes[0]
    assert sorted(line.get_label() for line in axes.lines) == ["_front_ddim_p2p", "_front_sdedit"]
    # the legend shows only what is drawn for every method: its points' marker (no line for a 1-point front)
    assert sorted(t.get_text() for t in axes.get_legend().get_texts()) == ["ddim_p2p", "sdedit"]
    assert sorted(t.get_text() for t in axes.texts) == ["cross_replace_steps=0.4", "cross_replace_steps=0.8",
                                                        "strength=0.5", "strength=0.8", "strength=1.0"]  # labelled
    sdedit = next(line for line in axes.lines if line.get_label() == "_front_sdedit")
    assert len(sdedit.get_xdata()) == 3 and list(sdedit.get_xdata()) == sorted(sdedit.get_xdata())
    stars = {c.get_label(): tuple(np.round(c.get_offsets()[0], 4)) for c in axes.collections
             if c.get_label().startswith("_default_")}
    sd_default = table[(table["method"] == "sdedit") & (table["point"] == "strength=0.8")].iloc[0]
    assert stars["_default_sdedit"] == (round(sd_default["lpips_alex ↓"], 4), round(sd_default["clip_score ×100 ↑"], 4))
    assert len(stars) == 2
    dots = [c for c in axes.collections if c.get_label() == "sdedit"]
    assert len(dots) == 1 and len(dots[0].get_offsets()) == 3  # every grid point is drawn
    paths = write_tradeoff_plot(results)
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and paths["pdf"].read_bytes()[:4] == b"%PDF"


def test_pareto_front_keeps_points_not_beaten_on_both_axes():
    import pandas as pd

    from bench.plots import pareto_front

    points = pd.DataFrame({"lpips ↓": [0.1, 0.2, 0.3, 0.25], "clip ↑": [20.0, 25.0, 30.0, 24.0]})
    front = pareto_front(points, "lpips ↓", "clip ↑")
    assert list(front["lpips ↓"]) == [0.1, 0.2, 0.3]  # (0.25, 24) is beaten by (0.2, 25)


def test_report_is_self_contained_and_has_every_part(results, tmp_path):
    path = build_report(results)
    text = path.read_text()
    assert path == results / "report" / "index.html"
    assert "<h2>Summary</h2>" in text and "<h2>Trade-off</h2>" in text and "<h2>Images</h2>" in text
    assert "<h2>Failures</h2>" in text and "boom" in text
    # 2 items per method: no paired test can reach p < 0.05, so no best is marked (tests/test_stats.py)
    assert "class='best'" not in text and "<h2>Method vs method</h2>" in text and "sign-flip" in text
    sources = re.findall(r"src='([^']*)'", text)
    assert len(sources) == 1 + 2 * (1 + 5)  # the plot + 2 rows × (source + every swept point: 3 + 2)
    assert all(s.startswith("data:image/png;base64,") for s in sources)  # nothing to fetch, works when copied
    assert not re.search(r"(href|src)=['\"](http|//|file:)", text)
    assert "“a cat” → “a dog”" in text and "sdedit (strength=0.8, seed 0)" in text  # captions
    assert "sdedit (strength=0.5, seed 0)" in text and "ddim_p2p (cross_replace_steps=0.4, seed 0)" in text
    links = re.findall(r"<a href='([^']*)'>", text)  # each edit links to its record, relative to report/
    assert len(links) == 2 * 5 and all((path.parent / link).resolve().is_file() for link in links)
    assert "image-rendering: pixelated" in text and "<dl class='legend'>" in text


def test_report_rejects_a_dir_without_records(tmp_path):
    with pytest.raises(FileNotFoundError, match="no edit records"):
        build_report(tmp_path)


def test_bench_report_command(results):
    result = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(results), "--max-rows", "1"],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "report:" in result.stdout
    assert len(re.findall(r"<figure>", (results / "report" / "index.html").read_text())) == 1 + 1 * (1 + 5)
    assert (results / "tables" / "summary.md").is_file() and (results / "plots" / "tradeoff.pdf").is_file()
    bad = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(results), "--paper", "nope"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "nope" in bad.stdout and "stylediffusion" in bad.stdout


def render(html_path: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    shot = tmp_path / "shot.png"
    return shot, screenshot_report(html_path, shot)


def assert_not_blank(shot: Path) -> None:
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float32)
    assert pixels.size > 0 and shot.stat().st_size > 1000
    assert pixels.std() > 5, "the screenshot is blank"
    assert (pixels < 128).mean() > 0.002, "no dark (text/image) pixels rendered"


@needs_chromium
def test_report_renders_in_headless_chromium_without_console_errors(results, tmp_path):
    html = build_report(results)
    copied = tmp_path / "copied" / "report.html"  # the page alone, away from the results dir
    copied.parent.mkdir()
    shutil.copy(html, copied)
    shot, console = render(copied, tmp_path)
    assert console == []
    assert_not_blank(shot)


@needs_chromium
def test_console_errors_and_blank_pages_are_detected(tmp_path):
    """The checks above can fail: a page with a script error is caught, a blank page is caught."""
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><p>x</p><script>undefinedFunction();</script></body></html>")
    _, console = render(broken, tmp_path)
    assert any("undefinedFunction" in line for line in console)
    blank = tmp_path / "blank.html"
    blank.write_text("<html><body></body></html>")
    shot, _ = render(blank, tmp_path)
    with pytest.raises(AssertionError, match="blank"):
        assert_not_blank(shot)


@needs_chromium
def test_bench_report_screenshot_option(results):
    run = subprocess.run([sys.executable, "-m", "bench.cli", "report", str(results), "--screenshot"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr[-2000:]
    shot = results / "report" / "screenshot.png"
    assert f"screenshot (headless Chromium): {shot}" in run.stdout
    assert_not_blank(shot)


def test_a_failed_render_is_not_hidden_by_an_old_screenshot(tmp_path):
    """Chromium writes into a scratch dir and the PNG is moved into place atomically: when the browser
    produces nothing, the call fails even though an old screenshot sits at the target path."""
    page, shot = tmp_path / "page.html", tmp_path / "screenshot.png"
    page.write_text("<html><body><p>x</p></body></html>")
    shot.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="wrote no screenshot"):
        screenshot_report(page, shot, chromium="/bin/false")
    assert shot.read_bytes() == b"old"
