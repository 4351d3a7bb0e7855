"""``bench docs presets [--write]``: the generated preset table of docs/methods.md (bench/preset_table.py)."""

from __future__ import annotations

from bench import preset_table


def presets(args) -> int:
    if args.write:
        changed = preset_table.write_table()
        print(f"{preset_table.DOC}: preset table {'rewritten' if changed else 'already up to date'}")
        return 0
    table = preset_table.render(preset_table.all_rows())
    if args.check:
        if table != preset_table.current_table():
            print(f"{preset_table.DOC}: preset table is stale; run `bench docs presets --write`")
            return 1
        return 0
    print(table)
    return 0


def register(subparsers) -> None:
    parser = subparsers.add_parser("docs", help="generated documentation sections")
    parser.add_argument("what", choices=["presets"])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="rewrite the table in docs/methods.md")
    mode.add_argument("--check", action="store_true", help="exit 1 when docs/methods.md is stale")
    parser.set_defaults(func=presets)
