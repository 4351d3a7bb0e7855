"""Content hashes of files and folders (the one home of the file hashers).

- ``file_sha256``: sha256 of a whole file (dataset images, manifests, downloads).
- ``file_fingerprint``: a weights file's whole-content sha256, 12 hex.
- ``fingerprint_dir``: a weights folder: (relative path, size, whole-content sha256) of every file, 16 hex.

Every byte counts (a fine-tune that differs only in the middle of a GB checkpoint gets its own
fingerprint). A weights file is hashed once: its digest is cached under its resolved path, size and
mtime (``digest_cache_path()``), so later start-ups only stat the files.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def file_sha256(path: str | Path) -> str:
    """sha256 (64 hex) of the whole file."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def digest_cache_path() -> Path:
    """Where whole-file sha256 digests of weight files are cached (by path, size and mtime)."""
    return Path(os.environ.get("EDITBENCH_CACHE") or Path.home() / ".cache" / "editbench") / "file_digests.json"


class DigestCache:
    """{resolved path: [size, mtime_ns, sha256]} in a JSON file; a damaged or read-only cache costs a re-hash."""

    def __init__(self, cache: str | Path | None = None) -> None:
        from bench.io import read_json

        self.path = Path(cache) if cache else digest_cache_path()
        try:
            self.known = read_json(self.path) if self.path.is_file() else {}
        except ValueError:
            self.known = {}
        self.changed = False

    def sha256(self, file: Path) -> str:
        stat = file.stat()
        where, stamp = str(file.resolve()), [stat.st_size, stat.st_mtime_ns]
        entry = self.known.get(where)
        if not entry or entry[:2] != stamp:
            entry = self.known[where] = [*stamp, file_sha256(file)]
            self.changed = True
        return entry[2]

    def save(self) -> None:
        from bench.io import write_json

        if self.changed:
            try:
                write_json(self.path, self.known)
            except OSError:
                pass


def file_fingerprint(path: str | Path, cache: str | Path | None = None) -> str:
    """sha256 of the whole weights file (digest cached by path, size and mtime): 12 hex."""
    digests = DigestCache(cache)
    value = digests.sha256(Path(path))
    digests.save()
    return value[:12]


def fingerprint_dir(path: str | Path, cache: str | Path | None = None) -> str:
    """Content fingerprint of a weights folder: sha256 over (relative path, size, whole-file sha256), 16 hex.
    Hidden files and ``*.lock`` are skipped (hub cache bookkeeping)."""
    root = Path(path)
    digests = DigestCache(cache)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel or rel.endswith(".lock"):
            continue
        digest.update(f"{rel}\0{file.stat().st_size}\0{digests.sha256(file)}\0".encode())
    digests.save()
    return digest.hexdigest()[:16]
