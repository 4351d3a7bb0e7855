"""bench.claims: work shared by processes through O_EXCL claim files — a live holder is waited for, a stale
claim (dead pid on this host, or not refreshed for too long) is taken over, nothing stays claimed after an
exception, and two real processes compute every key exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from bench.claims import ClaimDir, compute_claimed
from bench.io import _host

REPO_ROOT = Path(__file__).resolve().parent.parent


class Work:
    """Keys are done when ``<key>.done`` exists; ``compute`` writes them and logs what it computed."""

    def __init__(self, directory: Path, fail: bool = False) -> None:
        self.directory, self.fail, self.computed = directory, fail, []

    def done(self, key: str) -> bool:
        return (self.directory / f"{key}.done").is_file()

    def compute(self, keys: list[str]) -> None:
        if self.fail:
            raise RuntimeError("compute failed")
        for key in keys:
            (self.directory / f"{key}.done").write_text("here")
        self.computed += keys


def write_claim(claims: ClaimDir, key: str, holder: dict, age: float = 0.0) -> Path:
    path = claims.path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(holder))
    if age:
        os.utime(path, (time.time() - age, time.time() - age))
    return path


def claim_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.claim*"))


@pytest.fixture
def live_pid():
    """The pid of a process that runs for the whole test (another job's)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_claim_held_by_a_live_process_is_waited_for_not_recomputed(tmp_path, live_pid):
    claims, work = ClaimDir(tmp_path), Work(tmp_path)
    held = write_claim(claims, "a", {"host": _host(), "pid": live_pid, "token": "other"})

    def other_job_finishes() -> None:
        time.sleep(0.5)
        (tmp_path / "a.done").write_text("by the other job")
        held.unlink()

    thread = threading.Thread(target=other_job_finishes)
    thread.start()
    start = time.perf_counter()
    computed = compute_claimed(claims, ["a", "b"], work.done, work.compute, chunk=8, poll_seconds=0.05)
    thread.join()
    assert computed == 1 and work.computed == ["b"]
    assert time.perf_counter() - start >= 0.5  # it waited for "a"
    assert (tmp_path / "a.done").read_text() == "by the other job"
    assert claim_files(tmp_path) == []


def test_a_claim_of_a_dead_process_on_this_host_is_taken_over(tmp_path):
    claims, work = ClaimDir(tmp_path), Work(tmp_path)
    write_claim(claims, "a", {"host": _host(), "pid": dead_pid(), "token": "gone"})  # fresh mtime: the pid decides
    assert compute_claimed(claims, ["a"], work.done, work.compute, chunk=8, poll_seconds=0.05) == 1
    assert work.computed == ["a"] and claim_files(tmp_path) == []


def test_a_claim_not_refreshed_for_the_stale_limit_is_taken_over(tmp_path, live_pid):
    claims = ClaimDir(tmp_path, stale_seconds=60)
    foreign = {"host": "another-host", "pid": live_pid, "token": "far"}
    write_claim(claims, "old", foreign, age=61)
    write_claim(claims, "unnamed", {}, age=61)  # created, never written, long ago
    fresh = write_claim(claims, "fresh", foreign, age=30)
    assert claims.is_stale(claims.path("old"), foreign) and not claims.is_stale(fresh, foreign)
    assert not claims.try_claim("fresh")
    assert claims.try_claim("old") and claims.try_claim("unnamed")
    assert json.loads(claims.path("old").read_text()) == claims.owner
    claims.release("old")
    claims.release("unnamed")
    assert claim_files(tmp_path) == [fresh]  # the live one is untouched


def test_nothing_stays_claimed_after_an_exception(tmp_path):
    claims, work = ClaimDir(tmp_path), Work(tmp_path, fail=True)
    with pytest.raises(RuntimeError, match="compute failed"):
        compute_claimed(claims, ["a", "b", "c"], work.done, work.compute, chunk=2)
    assert claim_files(tmp_path) == []


def test_compute_must_finish_its_keys(tmp_path):
    claims = ClaimDir(tmp_path)
    with pytest.raises(RuntimeError, match="left 1 of its keys undone"):
        compute_claimed(claims, ["a"], lambda key: False, lambda keys: None, chunk=1)
    assert claim_files(tmp_path) == []


def test_release_removes_only_its_own_claim(tmp_path, live_pid):
    ours, theirs = ClaimDir(tmp_path), ClaimDir(tmp_path)  # two holders (tokens) in one process
    assert theirs.try_claim("a")
    assert not ours.try_claim("a")  # same host, live pid, fresh: held
    ours.release("a")
    assert json.loads(ours.path("a").read_text()) == theirs.owner
    theirs.release("a")
    assert claim_files(tmp_path) == []


def test_a_holder_keeps_its_claims_fresh_while_it_computes(tmp_path):
    holder, observer = ClaimDir(tmp_path, stale_seconds=1.0), ClaimDir(tmp_path, stale_seconds=1.0)
    seen = []

    def slow(keys: list[str]) -> None:
        for _ in range(8):  # 2.4 s, over twice the stale limit; the refresher touches every 0.25 s
            time.sleep(0.3)
            seen.append(observer.is_stale(holder.path(keys[0]), holder.owner))
            seen.append(observer.try_claim(keys[0]))
        (tmp_path / f"{keys[0]}.done").write_text("done")

    compute_claimed(holder, ["a"], lambda key: (tmp_path / f"{key}.done").is_file(), slow, chunk=1)
    assert not any(seen)
    assert claim_files(tmp_path) == []


WORKER = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from bench.claims import ClaimDir, compute_claimed

    root = Path(sys.argv[1])
    while not (root / "go").exists():  # both processes start the work together
        time.sleep(0.01)

    def compute(keys):
        time.sleep(0.1 * len(keys))
        with open(root / "log", "a") as log:  # O_APPEND: one line per key, whole lines
            log.write("".join(f"{key} {os.getpid()}\\n" for key in keys))
        for key in keys:
            (root / f"{key}.done").write_text("")

    done = lambda key: (root / f"{key}.done").is_file()
    compute_claimed(ClaimDir(root / "claims"), [f"k{i}" for i in range(16)], done, compute, chunk=2,
                    poll_seconds=0.02)
""")


def test_two_processes_compute_every_key_once(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(tmp_path)], env=env) for _ in range(2)]
    time.sleep(0.5)
    (tmp_path / "go").write_text("")
    assert [proc.wait(timeout=60) for proc in procs] == [0, 0]
    lines = (tmp_path / "log").read_text().splitlines()
    keys = sorted(line.split()[0] for line in lines)
    assert keys == sorted(f"k{i}" for i in range(16))  # each key once: nobody recomputed a claimed key
    assert claim_files(tmp_path / "claims") == []
