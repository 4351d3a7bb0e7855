"""Citations point only at files users have: this repository's files (``docs/…#anchor``) or a reference
repository's ``owner/repo@commit file`` and lines, never at notes outside the repository."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".csv", ".toml"}
NAMES = {"Makefile"}

# Built from pieces so that this file does not match itself.
FORBIDDEN = [
    re.compile("spec " + "\u00a7"),
    re.compile(re.escape("/work/" + "shared")),
    re.compile(re.escape("conventions" + ".md")),
    re.compile("methods " + "spec"),
    re.compile(r"(?<![\w.])[MC] " + r"L\d+"),  # a line of the notes as a source cell ("M" or "C", a space, "L<n>")
]


def forbidden_hits(text: str) -> list[tuple[int, str]]:
    """(line number, matched text) for every forbidden citation in ``text``."""
    return [(n, m.group(0)) for n, line in enumerate(text.splitlines(), 1)
            for pattern in FORBIDDEN for m in pattern.finditer(line)]


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.split("\0")
    paths = [REPO_ROOT / n for n in names if n]
    return [p for p in paths if (p.suffix in SUFFIXES or p.name in NAMES) and p.is_file()]


def test_the_checker_catches_each_forbidden_form():
    bad = ["see the spec " + "\u00a72.3", "/work/" + "shared/spec/methods.md", "conventions" + ".md \u00a71.F",
           "from the methods " + "spec (\u00a71)", "| lpips | M" + " L396-399 |", "| bg | C" + " L401 |"]
    for line in bad:
        assert forbidden_hits(line), line
    good = ["docs/metrics.md#the-metrics", "docs/methods.md#presets",
            "cure-lab/PnPInversion@f480116 `evaluation/matrics_calculator.py` L276, L324-342",
            "omerbt/Splice@12e0146 util/losses.py L19-24", "method_spec(label)", "ABC L12"]
    for line in good:
        assert not forbidden_hits(line), line


def test_no_tracked_file_cites_notes_outside_the_repository():
    files = tracked_text_files()
    assert any(p.name == "metrics.md" for p in files)  # the scan sees the docs
    hits = [f"{p.relative_to(REPO_ROOT)}:{n}: {found}" for p in files
            for n, found in forbidden_hits(p.read_text(encoding="utf-8", errors="ignore"))]
    assert hits == [], "citations of notes outside the repository:\n" + "\n".join(hits)
