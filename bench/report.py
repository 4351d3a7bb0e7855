"""A self-contained HTML report of a results dir: configuration, tables (ours and paper vs ours),
the CLIP-vs-LPIPS trade-off plot and an image grid (source | each method's edit, one row per
(image, target prompt)), all in one file: images are inlined as base64 thumbnails, so the page
works when copied anywhere, opened from disk, offline. No JavaScript, no external resources; each edit
links to its record by a relative path (``../edits/<method>/<key>.json``), which works beside the results.

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
from bench.paper_tables import applicable_papers, paper_comparison, paper_tables
from bench.plots import star_meaning
from bench.report_stats import comparison_section, rank_agreement_html
from bench.tables import default_points, display_cells, load_edits, load_long, summary_table

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
/* the summary fits a 1400-px page: compact cells, headers wrap instead of widening their column */
table.summary { font-size: 11px; } table.summary th { max-width: 96px; white-space: normal; overflow-wrap: break-word; }
table.summary td { padding: 2px 4px; } table.summary td.text { max-width: 180px; overflow-wrap: break-word; }
dl.legend { font-size: 11px; color: #444; columns: 2; max-width: 1350px; } dl.legend dt { font-weight: bold; }
dl.legend dd { margin: 0 0 4px 12px; }
/* small images (the toy world's 64 px) are shown at least 128 px wide without smoothing */
.grid img { min-width: 128px; image-rendering: pixelated; }
details { margin: 4px 0; } summary { cursor: pointer; font-size: 12px; }
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


def table_html(table: pd.DataFrame, caption: str = "", css_class: str = "") -> str:
    """A table with the best value of every ↑/↓ column marked (class="best", bold)."""
    if table.empty:
        return "<p class='note'>no rows</p>"
    headers, rows, flags = display_cells(table)
    numeric = {h: pd.api.types.is_numeric_dtype(table[h]) for h in headers}
    out = [f"<table class='{css_class}'>" if css_class else "<table>"]
    if caption:
        out.append(f"<caption>{_esc(caption)}</caption>")
    # headers may wrap after an underscore (<wbr>), so long metric ids do not widen their column
    out.append("<tr>" + "".join(f"<th>{_esc(h).replace('_', '_<wbr>')}</th>" for h in headers) + "</tr>")
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


def grid_frame(edits: pd.DataFrame, max_rows: int | None = None) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(columns, rows): a column per (method, swept point) in table order, a row per (dataset, item) with
    the source and each column's edit at the lowest seed; rows sorted by edit category, then item."""
    from bench.presets import order_points

    ok = edits[edits["status"] == "ok"]
    if ok.empty:
        return [], []
    picked = ok[ok["seed"] == ok.groupby(["method", "point"])["seed"].transform("min")]
    columns = [(r["method"], r["point"]) for _, r in order_points(picked.drop_duplicates(["method", "point"])).iterrows()]
    rows = []
    for (category, dataset, item_id), group in picked.groupby(["edit_category", "dataset", "item_id"], sort=True):
        first = group.iloc[0]
        rows.append({"category": category or "(no category)", "dataset": dataset, "item_id": item_id,
                     "source": first["source"], "source_prompt": first["source_prompt"],
                     "target_prompt": first["target_prompt"],
                     "edits": {(r["method"], r["point"]): (r["edited"], r["seed"]) for _, r in group.iterrows()}})
    return columns, rows[:max_rows] if max_rows else rows


def grid_html(results_dir: Path, columns: list[tuple[str, str]], rows: list[dict[str, Any]]) -> str:
    """One table per edit category; each edit links to its record (../edits/<method>/<key>.json)."""
    if not rows:
        return "<p class='note'>no edited images</p>"
    head = ("<tr><th>source</th>" + "".join(f"<th>{_esc(m)}<br><span class='note'>{_esc(p)}</span></th>"
                                             for m, p in columns) + "</tr>")
    out = []
    for category, group in pd.DataFrame(rows).groupby("category", sort=True):
        out += [f"<h3>{_esc(category)} ({len(group)} items)</h3>", "<table class='grid'>", head]
        for row in group.to_dict("records"):
            src = image_data_uri(results_dir / row["source"]) if row["source"] else None
            caption = f"{row['item_id']}: “{row['source_prompt']}” → “{row['target_prompt']}”"
            cells = [f"<td><figure>{_img(src, 'source ' + str(row['item_id']))}"
                     f"<figcaption>{_esc(caption)}</figcaption></figure></td>"]
            for method, point in columns:
                if (method, point) not in row["edits"]:
                    cells.append("<td class='note'>—</td>")
                    continue
                edited, seed = row["edits"][(method, point)]
                uri = image_data_uri(results_dir / edited) if edited else None
                record = f"../{Path(edited).with_suffix('.json').as_posix()}" if edited else ""
                cells.append(f"<td><figure><a href='{_esc(record)}'>{_img(uri, f'{method} {point}')}</a>"
                             f"<figcaption>{_esc(method)} ({_esc(point)}, seed {_esc(seed)})</figcaption></figure></td>")
            out.append("<tr>" + "".join(cells) + "</tr>")
        out.append("</table>")
    return "\n".join(out)


COLUMN_LEGEND = {
    "point": "the swept hyperparameter values of this row ('default' = nothing swept)",
    "≠ paper default": "every hyperparameter that differs from the method's paper defaults (conf/method/<method>.yaml), "
                       "[preset] = the per-model preset that set values (conf/method_model/)",
    "n": "edited items (ok)", "failed": "items that failed (see Failures)", "seeds": "seeds run",
    "NFE/item": "UNet evaluations per item, inversion included", "s/item": "seconds per item, inversion included",
    "psnr_vs_source": "PSNR (dB) of the edit against its source",
    "↑ / ↓": "higher / lower is better; ×k = shown multiplied by k; bold = best in the column",
}


def legend_html(table: pd.DataFrame) -> str:
    """The column legend of the summary table (entries for the columns present)."""
    from bench.tables import nan_footnote

    present = " ".join(map(str, table.columns))
    items = [(k, v) for k, v in COLUMN_LEGEND.items() if k.split(" ")[0] in present or k == "↑ / ↓"]
    items += [(note[2:].split(":")[0].strip("`") + " -- (k NaN)", note.split(": ", 1)[1]) for note in nan_footnote(table)[1:]]
    return "<dl class='legend'>" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items) + "</dl>"


def configs_html(configs: list[Path], results_dir: Path) -> str:
    """Every job's composed config, interpolations (${oc.env:...}, ${paths...}) resolved where they can be."""
    from omegaconf import OmegaConf

    out = [f"<p class='note'>{len(configs)} job(s), oldest first; click to open.</p>"]
    for path in configs:
        shown = path.relative_to(results_dir) if path.is_relative_to(results_dir) else path
        try:
            text = OmegaConf.to_yaml(OmegaConf.load(path), resolve=True)
        except Exception as err:  # e.g. an env var unset now: show the file as written
            text = f"# not resolved ({type(err).__name__}: {err})\n" + path.read_text(encoding="utf-8")
        overrides = " ".join(read_overrides(path)) or "(no overrides)"
        out.append(f"<details><summary>{_esc(overrides)} <span class='note'>{_esc(shown)}</span></summary>"
                   f"<pre>{_esc(text)}</pre></details>")
    return "\n".join(out)


def _img(uri: str | None, alt: str) -> str:
    if uri is None:
        return f"<span class='note'>missing image ({_esc(alt)})</span>"
    return f"<img src='{uri}' alt='{_esc(alt)}'>"


def analysis_sections(results_dir: Path) -> list[str]:
    """The HTML fragments that analysis experiments wrote (``analyses/<name>/section.html``, bench.analyses)."""
    return [path.read_text(encoding="utf-8") for path in sorted(results_dir.glob("analyses/*/section.html"))]


def build_report(results_dir: str | Path, out: str | Path | None = None, papers: Iterable[str] | None = None,
                 max_rows: int | None = None, title: str | None = None, sweep_dirs: Iterable[str | Path] = ()) -> Path:
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
    parts.append(table_html(table, css_class="summary"))
    parts.append(legend_html(table))
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
                     f"<figcaption>One curve per method over its grid (its Pareto front), each point labelled "
                     f"with its swept values{_esc('; ' + star) if (star := star_meaning(edits, default_points(edits))) else ''}. "
                     f"Also plots/tradeoff.pdf.</figcaption></figure>")
    else:
        parts.append("<p class='note'>no trade-off plot: it needs an LPIPS-like and a CLIP-like metric</p>")

    columns, rows = grid_frame(edits, max_rows) if not edits.empty else ([], [])
    parts.append("<h2>Images</h2>")
    parts.append(f"<p class='note'>Source | each method's edit at every swept point, per edit category "
                 f"({len(rows)} items{'' if not max_rows else f', at most {max_rows}'}); click an edit for its record.</p>")
    parts.append(grid_html(results_dir, columns, rows))

    if not edits.empty and (edits["status"] == "failed").any():
        failed = edits[edits["status"] == "failed"][["method", "point", "item_id", "error"]]
        parts.append("<h2>Failures</h2>")
        parts.append(failed.to_html(index=False, escape=True, border=0))

    parts.append("<h2>Configuration</h2>")
    if configs:
        parts.append(configs_html(configs, results_dir))
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
                      width: int = 1400, height: int = 2400) -> list[str]:
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
