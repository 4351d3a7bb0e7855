"""``bench tables RESULTS_DIR``: aggregate every record under a results dir into tables."""

from __future__ import annotations

from pathlib import Path


def make_tables(args) -> int:
    from bench.tables import summary_table, to_markdown, write_tables

    results_dir = Path(args.results_dir)
    if not (results_dir / "edits").is_dir():
        print(f"error: {results_dir} holds no edit records (expected {results_dir / 'edits'}/)")
        return 2
    paths = write_tables(results_dir)
    print(to_markdown(summary_table(results_dir)))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("tables", help="aggregate a results dir into markdown/CSV/LaTeX tables")
    parser.add_argument("results_dir", help="e.g. results/default")
    parser.set_defaults(func=make_tables)
