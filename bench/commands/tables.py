"""``bench tables RESULTS_DIR``: aggregate every record under a results dir into tables.

``--compare A B`` also prints the paired comparison of two method labels (each at its default point)
on every metric: A − B on the shared items, its 95 % bootstrap interval and the sign-flip p-value."""

from __future__ import annotations

from pathlib import Path


def make_tables(args) -> int:
    from bench.table_files import write_tables
    from bench.tables import load_edits, summary_table, to_markdown

    results_dir = Path(args.results_dir)
    if not (results_dir / "edits").is_dir():
        print(f"error: {results_dir} holds no edit records (expected {results_dir / 'edits'}/)")
        return 2
    paths = write_tables(results_dir)
    edits = load_edits(results_dir)
    print(to_markdown(summary_table(results_dir, edits)))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    if args.compare:
        return print_comparison(results_dir, edits, *args.compare)
    return 0


def print_comparison(results_dir: Path, edits, a: str, b: str) -> int:
    from bench import stats
    from bench.comparisons import compare_methods
    from bench.formatting import format_number
    from bench.table_stats import TEST_NAME
    from bench.tables import load_long

    try:
        frame = compare_methods(load_long(results_dir, edits), edits, a, b)
    except ValueError as err:
        print(f"error: {err}")
        return 2
    print(f"\n{a} vs {b} (each at its default point; {a} − {b} on the items both scored; "
          f"{stats.LEVEL:.0%} bootstrap interval over items; p: {TEST_NAME}):\n")
    print("| " + " | ".join(frame.columns) + " |")
    print("|" + "|".join("---" for _ in frame.columns) + "|")
    for row in frame.itertuples(index=False):
        print("| " + " | ".join(format_number(v, 4) for v in row) + " |")
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("tables", help="aggregate a results dir into markdown/CSV/LaTeX tables")
    parser.add_argument("results_dir", help="e.g. results/default")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"),
                        help="paired comparison of two method labels on every metric (e.g. ef_ddpm ddim_p2p)")
    parser.set_defaults(func=make_tables)
