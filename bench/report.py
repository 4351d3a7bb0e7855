"""A self-contained HTML report of a results dir: configuration, tables (ours and paper vs ours),
the CLIP-vs-LPIPS trade-off plot and an image grid (source | each method's edit, one row per
(image, target prompt)), all in one file: images are inlined as base64 thumbnails, so the page
works when copied anywhere, opened from disk, offline. No JavaScript, no external resources.

    bench report results/ef_ddpm_tradeoff_ti2i      → results/ef_ddpm_tradeoff_ti2i/report/index.html
"""

from __future__ import annotations

import base64
import html
import io
import logging
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pandas as pd

from bench import table_stats
from bench.io import atomic_path, write_text
from bench.report_stats import comparison_section, rank_agreement_html
from bench.tables import (
    applicable_papers,
    default_points,
    display_cells,
    load_edits,
    load_long,
    paper_comparison,
    paper_tables,
    summary_table,
)

log = logging.getLogger(__name__)

THUMBNAIL = 192  # px, longest side of the inlined images

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px; color: #1d1d1f; background: #fff; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 32px; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 13px; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: right; vertical-align: top; }
th { background: #f2f2f2; } td.text { text-align: left; }
td.best { font-weight: bold; background: #eaf6ea; }
td.sig { font-weight: bold; } td.sig.better { background: #eaf6ea; } td.sig.worse { background: #fbeaea; }
.grid td { text-align: center; } .grid img { display: block; margin: 0 auto; max-width: 192px; }
figure { margin: 0; } figcaption { font-size: 11px; color: #555; max-width: 200px; }
pre { background: #f7f7f7; padding: 8px; font-size: 12px; overflow-x: auto; max-height: 420px; }
.note { color: #666; font-size: 12px; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def image_data_uri(path: str | Path, size: int = THUMBNAIL) -> str | None:
    """A PNG thumbnail of ``path`` as a data: URI (None when the file is missing or unreadable)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((size, size))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
    except (OSError, ValueError) as err:
        log.warning("report: cannot read image %s: %s", path, err)
        return None
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def file_data_uri(path: str | Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def table_html(table: pd.DataFrame, caption: str = "") -> str:
    """A table with the best value of every ↑/↓ column marked (class="best", bold)."""
    if table.empty:
        return "<p class='note'>no rows</p>"
    headers, rows, flags = display_cells(table)
    numeric = {h: pd.api.types.is_numeric_dtype(table[h]) for h in headers}
    out = ["<table>"]
    if caption:
        out.append(f"<caption>{_esc(caption)}</caption>")
    out.append("<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in headers) + "</tr>")
    for cells, marks in zip(rows, flags):
        tds = []
        for header, cell, best in zip(headers, cells, marks):
            classes = ([] if numeric[header] else ["text"]) + (["best"] if best else [])
            attr = f" class='{' '.join(classes)}'" if classes else ""
            tds.append(f"<td{attr}>{_esc(cell)}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def find_configs(results_dir: Path, sweep_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Hydra config snapshots of the jobs that wrote into this results dir (its runs/ and multirun/, the
    default Hydra output dirs, plus the given sweep dirs), newest last."""
    paths = list(results_dir.glob("runs/*/.hydra/config.yaml")) + list(results_dir.glob("multirun/*/*/.hydra/config.yaml"))
    for sweep in sweep_dirs:
        paths += list(Path(sweep).glob("*/.hydra/config.yaml"))
    return sorted(set(paths), key=lambda p: p.stat().st_mtime)


def read_overrides(config_path: Path) -> list[str]:
    import yaml

    overrides = config_path.parent / "overrides.yaml"
    if not overrides.is_file():
        return []
    return list(yaml.safe_load(overrides.read_text(encoding="utf-8")) or [])


def configured_papers(configs: list[Path]) -> list[str]:
    """The ``paper:`` list of the newest job config that has one."""
    import yaml

    for path in reversed(configs):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError:
            continue
        if isinstance(data.get("paper"), list):
            return [str(p) for p in data["paper"]]
    return []


def grid_frame(edits: pd.DataFrame, max_rows: int) -> tuple[list[str], list[dict[str, Any]]]:
    """(method columns, rows): one row per (dataset, item) with the source and, per method, the edit
    at its default point (else its first point) and lowest seed."""
    ok = edits[edits["status"] == "ok"]
    if ok.empty:
        return [], []
    defaults = default_points(edits)
    chosen = []
    for method, group in ok.groupby("method", sort=True):
        point = defaults.get(method)
        if point is None or point not in set(group["point"]):
            point = sorted(group["point"])[0]
        sel = group[group["point"] == point]
        chosen.append(sel[sel["seed"] == sel["seed"].min()])
    picked = pd.concat(chosen)
    methods = sorted(picked["method"].unique())
    rows = []
    for (dataset, item_id), group in picked.groupby(["dataset", "item_id"], sort=True):
        first = group.iloc[0]
        rows.append({"dataset": dataset, "item_id": item_id, "source": first["source"],
                     "source_prompt": first["source_prompt"], "target_prompt": first["target_prompt"],
                     "edits": {r["method"]: (r["edited"], r["point"], r["seed"]) for _, r in group.iterrows()}})
        if len(rows) >= max_rows:
            break
    return methods, rows


def grid_html(results_dir: Path, methods: list[str], rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p class='note'>no edited images</p>"
    out = ["<table class='grid'>", "<tr><th>source</th>" + "".join(f"<th>{_esc(m)}</th>" for m in methods) + "</tr>"]
    for row in rows:
        cells = []
        src = image_data_uri(results_dir / row["source"]) if row["source"] else None
        caption = f"{row['item_id']}: “{row['source_prompt']}” → “{row['target_prompt']}”"
        cells.append(f"<td><figure>{_img(src, 'source ' + str(row['item_id']))}"
                     f"<figcaption>{_esc(caption)}</figcaption></figure></td>")
        for method in methods:
            if method not in row["edits"]:
                cells.append("<td class='note'>—</td>")
                continue
            edited, point, seed = row["edits"][method]
            uri = image_data_uri(results_dir / edited) if edited else None
            cells.append(f"<td><figure>{_img(uri, f'{method} {point}')}"
                         f"<figcaption>{_esc(method)} ({_esc(point)}, seed {_esc(seed)}): "
                         f"{_esc(row['target_prompt'])}</figcaption></figure></td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f"<span class='note'>missing image ({_esc(alt)})</span>"
    return f"<img src='{uri}' alt='{_esc(alt)}'>"


def analysis_sections(results_dir: Path) -> list[str]:
    """The HTML fragments that analysis experiments wrote (``analyses/<name>/section.html``, bench.analyses)."""
    return [path.read_text(encoding="utf-8") for path in sorted(results_dir.glob("analyses/*/section.html"))]


def build_report(results_dir: str | Path, out: str | Path | None = None, papers: Iterable[str] | None = None,
                 max_rows: int = 24, title: str | None = None, sweep_dirs: Iterable[str | Path] = ()) -> Path:
    """Write the HTML report of ``results_dir`` (default ``<results_dir>/report/index.html``) and return
    its path. Also (re)writes the trade-off plot (``<results_dir>/plots/``) it embeds. ``sweep_dirs``:
    Hydra sweep dirs outside the results dir whose job configs should be shown."""
    results_dir = Path(results_dir)
    analyses = analysis_sections(results_dir)
    if not (results_dir / "edits").is_dir() and not analyses:
        raise FileNotFoundError(f"{results_dir} holds no edit records (expected {results_dir / 'edits'}/); "
                                "run an experiment first, e.g. `bench experiment=toy_default`")
    out = Path(out) if out else results_dir / "report" / "index.html"
    edits = load_edits(results_dir)
    table = summary_table(results_dir, edits)
    configs = find_configs(results_dir, sweep_dirs)
    wanted = list(papers) if papers is not None else configured_papers(configs)
    known = paper_tables()
    long = load_long(results_dir, edits) if not edits.empty else pd.DataFrame()
    paper_names = list(dict.fromkeys([p for p in wanted if p in known] + applicable_papers(edits, long, known)))

    from bench.plots import write_tradeoff_plot

    plot_paths = write_tradeoff_plot(results_dir)
    title = title or f"editbench report: {results_dir.name}"
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>",
             f"<style>{CSS}</style></head><body>", f"<h1>{_esc(title)}</h1>",
             f"<p class='note'>{_esc(results_dir.resolve())} — generated "
             f"{_esc(datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC'))}; "
             f"{len(edits)} edit records ({int((edits['status'] == 'ok').sum()) if not edits.empty else 0} ok)</p>"]

    parts.extend(analyses)
    parts.append("<h2>Summary</h2>")
    parts.append("<p class='note'>Mean over items and seeds (NaN skipped and counted); arrow = direction; "
                 f"NFE/item and s/item include the inversion. {_esc(table_stats.table_note(table))}</p>")
    parts.append(table_html(table))
    for name in paper_names:
        comparison = paper_comparison(results_dir, known[name], edits)
        sources = sorted(set(known[name]["source"]))
        parts.append(f"<h2>Paper vs ours: {_esc(name)}</h2>")
        parts.append(table_html(comparison))
        parts.append(rank_agreement_html(comparison, known[name], edits))
        parts.append("<p class='note'>Δ = ours − paper, in our display units. Sources: "
                     + "; ".join(_esc(s) for s in sources) + "</p>")
    if unknown := [p for p in wanted if p not in known]:
        parts.append(f"<p class='note'>configured paper tables not found: {_esc(unknown)}</p>")

    parts += comparison_section(long, edits)
    parts.append("<h2>Trade-off</h2>")
    if plot_paths:
        parts.append(f"<figure><img src='{file_data_uri(plot_paths['png'], 'image/png')}' "
                     f"alt='CLIP vs LPIPS trade-off' style='max-width:720px'>"
                     f"<figcaption>One curve per method over its grid; ★ = paper default. "
                     f"Also plots/tradeoff.pdf.</figcaption></figure>")
    else:
        parts.append("<p class='note'>no trade-off plot: it needs an LPIPS-like and a CLIP-like metric</p>")

    methods, rows = grid_frame(edits, max_rows) if not edits.empty else ([], [])
    parts.append("<h2>Images</h2>")
    parts.append(f"<p class='note'>Source | each method's edit at its default point (first {max_rows} items).</p>")
    parts.append(grid_html(results_dir, methods, rows))

    if not edits.empty and (edits["status"] == "failed").any():
        failed = edits[edits["status"] == "failed"][["method", "point", "item_id", "error"]]
        parts.append("<h2>Failures</h2>")
        parts.append(failed.to_html(index=False, escape=True, border=0))

    parts.append("<h2>Configuration</h2>")
    if configs:
        newest = configs[-1]
        shown = newest.relative_to(results_dir) if newest.is_relative_to(results_dir) else newest
        parts.append(f"<p class='note'>{len(configs)} job(s). Newest job's composed config "
                     f"({_esc(shown)}):</p>")
        parts.append(f"<pre>{_esc(newest.read_text(encoding='utf-8'))}</pre>")
        overrides = [" ".join(read_overrides(p)) or "(no overrides)" for p in configs]
        parts.append("<p class='note'>Overrides of every job:</p><pre>"
                     + _esc("\n".join(dict.fromkeys(overrides))) + "</pre>")
    else:
        parts.append("<p class='note'>no Hydra config snapshot in this results dir (runs/ or multirun/)</p>")
    parts.append("</body></html>\n")
    write_text(out, "\n".join(parts))
    return out


# ----------------------------------------------------------------------------------------------
# rendering check: headless Chromium


def find_chromium() -> str | None:
    import shutil

    return next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)


def screenshot_report(html_path: str | Path, png_path: str | Path, chromium: str | None = None,
                      width: int = 1280, height: int = 1600) -> list[str]:
    """Render ``html_path`` in headless Chromium (no network, no sync, a throwaway profile), write the
    screenshot to ``png_path`` and return the page's console lines (script errors show up there)."""
    import shutil
    import subprocess
    import tempfile

    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("headless Chromium not found (looked for chromium, chromium-browser, google-chrome "
                                "on PATH); Debian: apt-get install -y chromium")
    png_path = Path(png_path)
    with tempfile.TemporaryDirectory(prefix="editbench-chromium-") as scratch:
        shot = Path(scratch) / "screenshot.png"  # moved into place only once Chromium has written it
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             "--disable-default-apps", "--no-default-browser-check", f"--user-data-dir={Path(scratch) / 'profile'}",
             "--enable-logging=stderr", "--v=0", f"--window-size={width},{height}", f"--screenshot={shot}",
             Path(html_path).resolve().as_uri()],
            capture_output=True, text=True, timeout=120)
        if not shot.is_file():
            raise RuntimeError(f"Chromium wrote no screenshot of {html_path} (exit {result.returncode}): "
                               f"{result.stderr[-2000:]}")
        with atomic_path(png_path) as tmp:
            shutil.copyfile(shot, tmp)
    return [line for line in result.stderr.splitlines() if ":CONSOLE" in line]
