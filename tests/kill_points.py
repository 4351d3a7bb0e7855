"""Measure resume after SIGKILL at many points of a job (docs/reliability.md, "Resume").

    PYTHONPATH=. python tests/kill_points.py [N]

A reference job (tiny random model, SDEdit, 6 images) runs uninterrupted. Then, for each of N kill
times spread evenly over the reference duration (model loading included), a fresh job is killed with
SIGKILL at that time and resumed; the script checks that the resumed results dir holds exactly the
reference's edited PNGs byte for byte, that every record present at the kill is unchanged (not
recomputed), and that no temporary file is left. Not part of the test suite (minutes of CPU); the
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
    return [sys.executable, "-m", "bench.cli", "model=tiny_random", "method=sdedit", "method.num_inference_steps=20",
            "method.strength=1.0", *dataset_overrides(data), f"paths.results_dir={results}", "runtime.progress=false",
            "runtime.num_threads=1", "tables=false"]


def pngs(results: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (results / "edits").rglob("*.png")}


def main(n: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="kill-points-"))
    data = write_yaml_dataset((work / "data").mkdir() or work / "data", n_images=6)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    start = time.time()
    subprocess.run(args(data, work / "reference"), cwd=REPO, env=env, check=True, capture_output=True)
    duration = time.time() - start
    reference = pngs(work / "reference")
    survived = 0
    for i in range(1, n + 1):
        results = work / f"kill{i}"
        proc = subprocess.Popen(args(data, results), cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(duration * i / (n + 1))
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
        ok = same and kept and no_tmp and summary["skipped"] == len(before)
        survived += ok
        print(f"kill {i:2d} at {duration * i / (n + 1):5.1f} s: {len(before)} records done, {tmp_at_kill} temp file(s) "
              f"at the kill; resumed: skipped {summary['skipped']}, computed {summary['ok']}; byte-identical "
              f"{same}, finished records untouched {kept}, no temp left {no_tmp}", flush=True)
    print(f"{survived}/{n} kill points survived (reference job {duration:.1f} s)")
    shutil.rmtree(work)
    return 0 if survived == n else 1


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 12))
