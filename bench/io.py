"""Atomic file writes: write to a temporary file in the same directory, fsync, then rename.

A reader (or a resumed sweep after SIGKILL) sees either the complete old file, the complete new
file, or no file; never a truncated one. A temporary file is named ``<name>.tmp-<host>-<pid>-<rand>``
so that ``clean_stale_tmp`` removes only the leftovers of writers that are dead (same host, pid no
longer running) or, for another host's writers, older than ``STALE_FOREIGN_SECONDS``: jobs that
share a results directory never delete each other's files in flight. Every reader ignores
``*.tmp-*`` files. Files get the permissions the umask allows (as ``open`` would), not mkstemp's 0600.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

TMP_MARK = ".tmp-"
STALE_FOREIGN_SECONDS = 24 * 3600  # a temp file of another host (shared file system) this old is abandoned


def _host() -> str:
    return socket.gethostname().replace("-", "_").replace("/", "_") or "host"


def tmp_prefix(final: Path) -> str:
    """``<name>.tmp-<host>-<pid>-``: who is writing, so a cleaner can tell live writers from dead ones."""
    return f"{final.name}{TMP_MARK}{_host()}-{os.getpid()}-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path next to ``path``; on success it is fsynced and renamed onto ``path``."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(final), dir=final.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp creates 0600: collaborators could not read the results
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


def writer_is_dead(tmp: Path, now: float | None = None) -> bool:
    """True when the writer of temporary file ``tmp`` can no longer finish it."""
    host, _, rest = tmp.name.partition(TMP_MARK)[2].partition("-")
    pid = rest.partition("-")[0]
    if host == _host() and pid.isdigit():
        return not pid_alive(int(pid))
    age = (now or time.time()) - tmp.stat().st_mtime
    return age > STALE_FOREIGN_SECONDS  # another host's writer (or an unnamed one): only by age


def clean_stale_tmp(root: str | os.PathLike) -> int:
    """Remove temporary files left by writers that were killed; returns how many were removed."""
    removed = 0
    for tmp in Path(root).rglob(f"*{TMP_MARK}*"):
        try:
            if tmp.is_file() and writer_is_dead(tmp):
                tmp.unlink(missing_ok=True)
                removed += 1
        except FileNotFoundError:  # its writer finished (renamed it) meanwhile
            continue
    return removed
