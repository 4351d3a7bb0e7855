"""``bench report RESULTS_DIR``: a self-contained HTML page (tables, trade-off plot, image grid, config)."""

from __future__ import annotations

from pathlib import Path


def make_report(args) -> int:
    from bench.report import analysis_sections, build_report
    from bench.table_files import write_tables

    results_dir = Path(args.results_dir)
    if not (results_dir / "edits").is_dir() and not analysis_sections(results_dir):
        print(f"error: {results_dir} holds no edit records (expected {results_dir / 'edits'}/) and no analysis")
        return 2
    try:
        write_tables(results_dir, papers=args.paper or None)
        path = build_report(results_dir, out=args.out, papers=args.paper or None, max_rows=args.max_rows)
    except ValueError as err:  # e.g. an unknown paper table name
        print(f"error: {err}")
        return 2
    print(f"report: {path}\nopen it in a browser (file://{path.resolve()}); it is one self-contained file")
    if args.screenshot:
        from bench.report import screenshot_report

        shot = path.with_name("screenshot.png")
        try:
            console = screenshot_report(path, shot)
        except (FileNotFoundError, RuntimeError) as err:
            print(f"error: {err}")
            return 2
        print(f"screenshot (headless Chromium): {shot}")
        if console:
            print("console messages while rendering:\n  " + "\n  ".join(console))
            return 1
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", help="write a self-contained HTML report of a results dir")
    parser.add_argument("results_dir", help="e.g. results/toy_default")
    parser.add_argument("--out", default=None, help="output file (default: RESULTS_DIR/report/index.html)")
    parser.add_argument("--paper", action="append", default=[],
                        help="published table to put beside ours (results/paper/<name>.csv); repeatable; "
                             "default: the experiment's `paper:` list plus every table measured on the same dataset")
    parser.add_argument("--max-rows", type=int, default=None, help="image grid rows (items) to include (default: all)")
    parser.add_argument("--screenshot", action="store_true",
                        help="also render the page in headless Chromium to report/screenshot.png "
                             "(fails on console errors)")
    parser.set_defaults(func=make_report)
