"""Work shared by processes that use one results directory: each piece is computed by one of them.

A process *claims* a piece of work (a key) by creating ``<directory>/<key>.claim`` with
``O_CREAT | O_EXCL`` (atomic on local and NFSv3+ file systems); the file holds the claimer's host, pid
and a random token. ``compute_claimed`` claims up to ``chunk`` missing keys at a time, computes them,
and releases the claims (try/finally, so an exception leaves nothing locked). Keys another live
process holds are waited for, not recomputed; two processes with the same keys split them in chunks
as they go. A claim is *stale*, and taken over, when its holder is on this host and its pid is no
longer running, or when the file has not been refreshed for ``stale_seconds`` (a holder refreshes the
mtime of its claims every ``stale_seconds / 4`` from a background thread while it computes, so only a
holder that is gone, stopped or on an unreachable host goes stale).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Sequence

from bench.io import _host, pid_alive

log = logging.getLogger(__name__)

CLAIM_SUFFIX = ".claim"
STALE_SECONDS = 600.0  # no refresh for 10 min: the holder is gone (its refresher runs every 2.5 min)
POLL_SECONDS = 0.5


class ClaimDir:
    """Claim files ``<directory>/<key>.claim`` of this process (one token per process object)."""

    def __init__(self, directory: str | Path, stale_seconds: float = STALE_SECONDS) -> None:
        self.directory = Path(directory)
        self.stale_seconds = float(stale_seconds)
        self.owner = {"host": _host(), "pid": os.getpid(), "token": uuid.uuid4().hex}

    def path(self, key: str) -> Path:
        return self.directory / f"{key}{CLAIM_SUFFIX}"

    def _read(self, path: Path) -> dict | None:
        """The holder of a claim file, {} while it is being written, None when there is no file."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            holder = json.loads(text)
        except json.JSONDecodeError:
            return {}  # created, not yet written (or written by something else): judged by age only
        return holder if isinstance(holder, dict) else {}

    def is_stale(self, path: Path, holder: dict) -> bool:
        """Same host and dead pid, or not refreshed for ``stale_seconds``."""
        pid = holder.get("pid")
        if holder.get("host") == self.owner["host"] and isinstance(pid, int) and not pid_alive(pid):
            return True
        try:
            return time.time() - path.stat().st_mtime > self.stale_seconds
        except FileNotFoundError:
            return False  # released meanwhile: try_claim will find the key free

    def _take_over(self, path: Path, holder: dict) -> None:
        """Remove a stale claim, unless someone replaced it meanwhile (then put theirs back)."""
        aside = path.with_name(f"{path.name}.takeover-{self.owner['token']}")
        try:
            os.rename(path, aside)
        except FileNotFoundError:
            return
        if self._read(aside) != holder:  # a fresh claim replaced the stale one after we read it
            with contextlib.suppress(FileExistsError):
                os.link(aside, path)
        aside.unlink(missing_ok=True)
        log.info("took over the stale claim %s of %s", path.name, holder or "an unnamed holder")

    def try_claim(self, key: str) -> bool:
        """Claim ``key`` if nobody live holds it (a stale claim is taken over first)."""
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):  # second try after taking over a stale claim
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                holder = self._read(path)
                if holder is None:
                    continue  # released between our open and read
                if not self.is_stale(path, holder):
                    return False
                self._take_over(path, holder)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(self.owner, handle)
            return True
        return False

    def release(self, key: str) -> None:
        """Remove our claim of ``key`` (never another holder's)."""
        path = self.path(key)
        if self._read(path) == self.owner:
            path.unlink(missing_ok=True)

    def refresh(self, keys: Sequence[str]) -> None:
        for key in keys:
            with contextlib.suppress(FileNotFoundError):
                os.utime(self.path(key))

    @contextlib.contextmanager
    def holding(self, keys: Sequence[str]) -> Iterator[None]:
        """Keep the claims of ``keys`` fresh while the body runs; release them however it ends."""
        stop = threading.Event()

        def refresher() -> None:
            while not stop.wait(self.stale_seconds / 4):
                self.refresh(keys)

        thread = threading.Thread(target=refresher, name="claim-refresh", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            for key in keys:
                self.release(key)


def compute_claimed(claims: ClaimDir, keys: Sequence[str], done: Callable[[str], bool],
                    compute: Callable[[list[str]], None], chunk: int, poll_seconds: float = POLL_SECONDS) -> int:
    """Make ``done(key)`` true for every key, computing only keys this process claims, ``chunk`` at a time.

    ``compute(keys)`` must make ``done`` true for each of its keys. Keys held by another live process
    are waited for. Returns how many keys this process computed.
    """
    if chunk < 1:
        raise ValueError(f"compute_claimed: chunk={chunk}, expected at least 1")
    remaining = [key for key in dict.fromkeys(keys) if not done(key)]
    computed, waited = 0, False
    while remaining:
        mine: list[str] = []
        for key in remaining:
            if len(mine) == chunk:
                break
            if claims.try_claim(key):
                if done(key):  # finished by its previous holder between our check and our claim
                    claims.release(key)
                else:
                    mine.append(key)
        if mine:
            with claims.holding(mine):
                compute(mine)
            unfinished = [key for key in mine if not done(key)]
            if unfinished:
                raise RuntimeError(f"compute_claimed: compute() left {len(unfinished)} of its keys undone, "
                                   f"e.g. {unfinished[0]!r} in {claims.directory}")
            computed += len(mine)
        else:  # every remaining key is held by a live process
            if not waited:
                log.info("waiting for %d key(s) claimed by other processes in %s", len(remaining), claims.directory)
                waited = True
            time.sleep(poll_seconds)
        remaining = [key for key in remaining if not done(key)]
    return computed
