"""Content hashes of files and folders (the one home of the file hashers).

- ``file_sha256``: sha256 of a whole file (dataset images, manifests, downloads).
- ``file_fingerprint``: a weights file's size plus its first and last 4 MiB (whole when small), 12 hex.
- ``fingerprint_dir``: a weights folder: (relative path, size, content) of every file, 16 hex.

The sampled forms keep start-up fast on multi-GB checkpoints and still change whenever the weights do.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CHUNK = 4 << 20  # 4 MiB


def _update_with_file(digest, path: Path, size: int | None = None, whole_up_to: int = 0, chunk: int = CHUNK) -> None:
    """Feed the whole file (no ``size`` given, or size ≤ ``whole_up_to``) or its first and last ``chunk``
    bytes into ``digest``."""
    with open(path, "rb") as handle:
        if size is None or size <= whole_up_to:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        else:
            digest.update(handle.read(chunk))
            handle.seek(size - chunk)
            digest.update(handle.read(chunk))


def file_sha256(path: str | Path) -> str:
    """sha256 (64 hex) of the whole file."""
    digest = hashlib.sha256()
    _update_with_file(digest, Path(path))
    return digest.hexdigest()


def file_fingerprint(path: str | Path, chunk: int = CHUNK) -> str:
    """sha256 over the size and the first and last ``chunk`` bytes of a file (whole file up to 2·chunk): 12 hex."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(f"{size}\0".encode())
    _update_with_file(digest, path, size, whole_up_to=2 * chunk, chunk=chunk)
    return digest.hexdigest()[:12]


def fingerprint_dir(path: str | Path, chunk: int = CHUNK) -> str:
    """Content fingerprint of a weights folder: sha256 over (relative path, size, content digest), 16 hex.

    Files up to 16·chunk (64 MiB) are hashed whole, larger ones by their size plus first and last chunk.
    Hidden files and ``*.lock`` are skipped (hub cache bookkeeping).
    """
    root = Path(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = file.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel or rel.endswith(".lock"):
            continue
        size = file.stat().st_size
        digest.update(f"{rel}\0{size}\0".encode())
        _update_with_file(digest, file, size, whole_up_to=16 * chunk, chunk=chunk)
    return digest.hexdigest()[:16]
