"""Tables of a ``bench perf`` run: markdown (with the command line and machine), CSV, JSON."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

from bench.io import atomic_path
from bench.perf.pairs import NO_REFERENCE_LOOP

METHOD_COLUMNS = ["method", "steps", "nfe_fwd", "nfe_bwd", "calls_by_batch", "wall_s", "invert_s", "edit_s",
                  "t_unet_ms", "unet_model_s", "overhead", "cpu_s", "overhead_cpu", "peak_mem_mb", "mem_increase_mb",
                  "baseline_calls", "baseline_s", "method_s", "speedup_vs_baseline", "speedup_cpu", "max_abs_diff",
                  "equal", "error"]


def _calls(calls: dict) -> str:
    return " ".join(f"{n}×b{b}" for b, n in sorted(calls.items(), key=lambda kv: int(kv[0]))) or "-"


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def baseline_absent(result) -> str:
    """The baseline cell of a method without a comparison: not run, or no reference-shaped loop (opt-in)."""
    return NO_REFERENCE_LOOP if result.has_reference_loop is False else "-"


def method_rows(report) -> list[dict]:
    rows = []
    for m in report.methods:
        latency = m.latency
        t_unet = " ".join(f"b{b}:{s * 1e3:.2f}" for b, s in latency["forward"].items())
        if latency["forward_backward"]:
            t_unet += " fb" + " fb".join(f"{b}:{s * 1e3:.2f}" for b, s in latency["forward_backward"].items())
        base = m.baseline or {}
        calls = _calls(m.forward_calls) + (f" + bwd {_calls(m.backward_calls)}" if m.backward_calls else "")
        rows.append({
            "method": m.label, "steps": m.steps, "nfe_fwd": m.nfe, "nfe_bwd": m.nfe_backward, "calls_by_batch": calls,
            "wall_s": m.wall_seconds, "invert_s": m.inversion_seconds, "edit_s": m.edit_seconds, "t_unet_ms": t_unet,
            "unet_model_s": m.model_seconds, "overhead": m.overhead, "cpu_s": m.cpu_seconds,
            "overhead_cpu": m.overhead_cpu, "peak_mem_mb": m.peak_memory_bytes / 2**20,
            "mem_increase_mb": m.memory_increase_bytes / 2**20,
            "baseline_calls": _calls(base["reference_calls"]) if base else baseline_absent(m),
            "baseline_s": base.get("reference_seconds"), "method_s": base.get("method_seconds"),
            "speedup_vs_baseline": base.get("speedup"), "speedup_cpu": base.get("speedup_cpu"), "max_abs_diff": base.get("max_abs_diff"),
            "equal": base.get("equal"), "error": m.error or "",
        })
    return rows


def grid_row(grid) -> dict:
    return {"method": grid.method, "points": len(grid.points), "steps": grid.steps,
            "skips": sorted({p["skip"] for p in grid.points}), "guidance_scale": sorted({p["guidance_scale"] for p in grid.points}),
            "shared_s": grid.shared_seconds, "independent_s": grid.independent_seconds, "speedup": grid.speedup,
            "shared_inversions": f"{grid.shared_inversions_computed} computed, {grid.shared_inversions_loaded} loaded",
            "independent_inversions": grid.independent_inversions_computed,
            "shared_nfe": grid.shared_nfe, "independent_nfe": grid.independent_nfe,
            "shared_cpu_s": grid.extra.get("shared_cpu_seconds"),
            "independent_cpu_s": grid.extra.get("independent_cpu_seconds"), "speedup_cpu": grid.extra.get("speedup_cpu"),
            "nfe_ratio": grid.independent_nfe / grid.shared_nfe if grid.shared_nfe else math.nan}


def markdown(report) -> str:
    m, o = report.machine, report.options
    lines = [
        f"# bench perf — model `{o['model']}`, {m['device']}, {m['dtype']}", "",
        f"- command: `{o['command']}`",
        f"- date (UTC): {m['date_utc']}; git {m['git'].get('sha')}{' (dirty)' if m['git'].get('dirty') else ''}",
        f"- model: {m.get('model', {}).get('model_id')} (weights fingerprint "
        f"{m.get('model', {}).get('weights_fingerprint')})",
        f"- machine: {m['cpu']}, {m['cpu_count']} CPUs, torch threads {m['torch_threads']}"
        + (f", GPU {m['gpu']}" if m.get("gpu") else ""),
        f"- versions: torch {m['torch']}, diffusers {m['diffusers']}, transformers {m['transformers']}, "
        f"python {m['python']}",
        "- load average (1/5/15 min) at start: " + " / ".join(f"{x:.2f}" for x in m["load_average_start"])
        + "; at end: " + " / ".join(f"{x:.2f}" for x in m.get("load_average_end", (math.nan,) * 3)),
        f"- steps override: {o['steps']}, inner steps: {o['inner_steps']}, t_UNet repeats: {o['repeats']}, "
        f"compile: {o['compile']}, baselines run in {o.get('baseline_dtype') or m['dtype']}, "
        f"total {report.total_seconds:.1f} s", "",
        "## Per method (one item: invert + edit through the runner)", "",
        "overhead = wall / Σ_b calls_b·t_UNet(b) (+ backward calls·(t_fwd+bwd − t_fwd)); t_UNet = median no-grad "
        "forward at batch b with fused attention (fb = forward+backward); baseline = reference-shaped loop "
        "(bench/perf/reference_loops.py), speedup = baseline_s / method_s (min of alternated runs, invert + edit "
        "only); *_cpu: the same ratios in process CPU seconds (CPU device; robust to other processes' load when "
        "torch runs one thread); equal: max |Δ| ≤ 1e-4·max(1, max|ref|) in fp32.", "",
    ]
    rows = method_rows(report)
    header = ["method", "steps", "nfe_fwd", "nfe_bwd", "calls_by_batch", "wall_s", "t_unet_ms", "overhead",
              "overhead_cpu", "peak_mem_mb", "baseline_calls", "baseline_s", "method_s", "speedup_vs_baseline",
              "speedup_cpu", "max_abs_diff", "equal"]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        cells = []
        for key in header:
            value = row[key]
            digits = 2 if key in ("speedup_vs_baseline", "speedup_cpu", "peak_mem_mb") else 3
            cells.append(f"{value:.2g}" if key == "max_abs_diff" and isinstance(value, float) else _fmt(value, digits))
        lines.append("| " + " | ".join(cells) + " |")
    errors = [r for r in rows if r["error"]]
    if errors:
        lines += ["", "Errors:"] + [f"- {r['method']}: {r['error']}" for r in errors]
    if report.grid_error:
        lines += ["", f"Grid failed: {report.grid_error}"]
    if report.grid is not None:
        g = grid_row(report.grid)
        lines += ["", f"## Ablation grid: {g['method']} {g['points']} points (T={g['steps']}, T_skip {g['skips']} × "
                      f"guidance_scale {g['guidance_scale']})", "",
                  "| mode | seconds | inversions | NFE |", "|---|---|---|---|",
                  f"| shared (one results dir, inversion reused) | {g['shared_s']:.3f} | {g['shared_inversions']} | "
                  f"{g['shared_nfe']} |",
                  f"| independent (inversion recomputed per point) | {g['independent_s']:.3f} | "
                  f"{g['independent_inversions']} computed | {g['independent_nfe']} |", "",
                  f"seconds: the fastest of {report.grid.extra.get('rounds', 1)} alternated rounds per mode; "
                  f"speedup ×{g['speedup']:.2f} (NFE ratio ×{g['nfe_ratio']:.2f}"
                  + (f"; CPU seconds {g['shared_cpu_s']:.3f} vs {g['independent_cpu_s']:.3f}, ×{g['speedup_cpu']:.2f}"
                     if g.get("speedup_cpu") else "") + ")"]
    lines += throughput_lines(report)
    return "\n".join(lines) + "\n"


def throughput_lines(report) -> list[str]:
    """The items/s table: one row per method, one column per B, and the speed-up over the smallest B."""
    results = [t for t in report.throughput if t.items_per_second]
    if not results:
        return [f"- {t.label} throughput failed: {t.error}" for t in report.throughput if t.error]
    sizes = sorted({b for t in results for b in t.items_per_second})
    lines = ["", f"## Items per second by item batch size B (runtime.batch_size; {results[0].items} items, "
                 "distinct images, invert + edit through the runner)", "",
             "| method | " + " | ".join(f"B={b}" for b in sizes) + " | "
             + " | ".join(f"×B={b}" for b in sizes[1:]) + " |",
             "|" + "---|" * (1 + 2 * len(sizes) - 1)]
    for t in results:
        lines.append(f"| {t.label} | " + " | ".join(_fmt(t.items_per_second.get(b, math.nan)) for b in sizes) + " | "
                     + " | ".join(f"{t.speedup(b):.2f}" for b in sizes[1:]) + " |")
    return lines + [f"- {t.label} throughput failed: {t.error}" for t in report.throughput if t.error]


def write_report(report, out_dir: str | Path) -> dict[str, Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out_dir / "perf.md", "methods_csv": out_dir / "methods.csv",
             "grid_csv": out_dir / "grid.csv", "json": out_dir / "perf.json"}
    with atomic_path(paths["markdown"]) as tmp:
        Path(tmp).write_text(markdown(report), encoding="utf-8")
    with atomic_path(paths["methods_csv"]) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=METHOD_COLUMNS)
            writer.writeheader()
            writer.writerows(method_rows(report))
    if report.grid is not None:
        with atomic_path(paths["grid_csv"]) as tmp:
            with open(tmp, "w", newline="", encoding="utf-8") as handle:
                row = grid_row(report.grid)
                writer = csv.DictWriter(handle, fieldnames=list(row))
                writer.writeheader()
                writer.writerow(row)
    else:
        paths.pop("grid_csv")
    with atomic_path(paths["json"]) as tmp:
        Path(tmp).write_text(json.dumps(report.as_dict(), indent=2, default=str), encoding="utf-8")
    return paths
