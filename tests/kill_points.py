"""Measure resume after SIGKILL at many points of a job (docs/reliability.md, "Resume").

    PYTHONPATH=. python tests/kill_points.py

A reference job (tiny random model, SDEdit, 6 images) runs uninterrupted. Then fresh jobs are killed
with SIGKILL at 2·6 + 1 points: during model loading, and for k = 0..5, right when the k-th record
(k = 0: the first source image) appears and 0.15 s later (mid-edit or mid-write), each then resumed.
For each, the script checks that the resumed results dir holds exactly the reference's edited PNGs
byte for byte, that every record present at the kill is unchanged (not recomputed), and that no
temporary file is left. Not part of the test suite (minutes of CPU); the
suite's test_runner.py kills one random point.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from test_runner import dataset_overrides, write_yaml_dataset  # noqa: E402


def args(data: Path, results: Path) -> list[str]:
    return [sys.executable, "-m", "bench.cli", "model=tiny_random", "method=sdedit", "method.num_steps=20",
            "method.strength=1.0", *dataset_overrides(data), f"paths.results_dir={results}", "runtime.progress=false",
            "runtime.num_threads=1", "tables=false"]


def pngs(results: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (results / "edits").rglob("*.png")}


def wait_for(results: Path, proc: subprocess.Popen, done: int) -> None:
    """Until ``done`` records exist (0: the first source image), or the job ends."""
    while proc.poll() is None:
        if (len(list((results / "edits").rglob("*.json"))) >= done if done else (results / "sources").is_dir()):
            return
        time.sleep(0.005)


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="kill-points-"))
    data = write_yaml_dataset((work / "data").mkdir() or work / "data", n_images=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    subprocess.run(args(data, work / "reference"), cwd=REPO, env=env, check=True, capture_output=True)
    duration = time.time() - start
    reference = pngs(work / "reference")
    points = [("loading the model", None, 2.0)] + [(f"record {k}" if k else "first source image", k, delay)
                                                  for k in range(6) for delay in (0.0, 0.15)]
    survived = 0
    for i, (name, done, delay) in enumerate(points, start=1):
        results = work / f"kill{i}"
        proc = subprocess.Popen(args(data, results), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if done is not None:
            wait_for(results, proc, done)
        time.sleep(delay)
        finished_first = proc.poll() is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        edits = results / "edits"
        before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in edits.rglob("*.json")} if edits.is_dir() else {}
        tmp_at_kill = len([p for p in results.rglob("*") if ".tmp-" in p.name]) if results.is_dir() else 0
        subprocess.run(args(data, results), cwd=REPO, env=env, check=True, capture_output=True)
        summary = json.loads(sorted(results.glob("runs/*/summary.json"))[-1].read_text())
        same = pngs(results) == reference
        kept = all(p.stat().st_mtime_ns == m and p.read_bytes() == b for p, (m, b) in before.items())
        no_tmp = not [p for p in results.rglob("*") if ".tmp-" in p.name]
        ok = same and kept and no_tmp and summary["skipped"] == len(before) and not finished_first
        survived += ok
        print(f"kill {i:2d} ({name} + {delay:.2f} s): {len(before)} records done, {tmp_at_kill} temp file(s) at the "
              f"kill; resumed: skipped {summary['skipped']}, computed {summary['ok']}; byte-identical {same}, "
              f"finished records untouched {kept}, no temp left {no_tmp}", flush=True)
    print(f"{survived}/{len(points)} kill points survived (reference job {duration:.1f} s)")
    shutil.rmtree(work)
    return 0 if survived == len(points) else 1


if __name__ == "__main__":
    sys.exit(main())
