"""A k-point ablation grid (EF-DDPM over T_skip × guidance_scale) through the runner with inversion reuse,
against k independent runs that each recompute the inversion.

Shared: the k jobs of a sweep write into one results directory; the first job computes the inversion
and saves it, the other k−1 load it (its key holds only the inversion hyperparameters: T, η, inversion_guidance_scale),
exactly as ``bench -m method.skip=… method.guidance_scale=…`` runs. Independent: each point in its own
results directory, so each one inverts again (what a script without a cache does).
"""

from __future__ import annotations

import gc
import itertools
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from bench.models import build_scheduler
from bench.perf.jobs import run_job
from bench.perf.measure import time_call_cpu
from bench.perf.setup import method_spec

DEFAULT_SKIP_FRACTIONS = (0.24, 0.36, 0.40)  # of T: 24/36/40 at T=100 (conf/experiment/tradeoff/ef_ddpm.yaml)
DEFAULT_CFG_TAR = (12.0, 15.0, 18.0)  # the paper default (36, 15) in the middle of the trade-off grid


@dataclass
class GridResult:
    method: str
    points: list[dict]
    shared_seconds: float
    independent_seconds: float
    shared_inversions_computed: int
    shared_inversions_loaded: int
    independent_inversions_computed: int
    shared_nfe: int
    independent_nfe: int
    steps: int
    extra: dict = field(default_factory=dict)

    @property
    def speedup(self) -> float:
        return self.independent_seconds / self.shared_seconds

    def as_dict(self) -> dict:
        return {**self.__dict__, "speedup": self.speedup}


def grid_specs(model: str, label: str, steps: int | None, skip_fractions, cfg_values, inner_steps=None):
    """One MethodSpec per grid point (T_skip = round(fraction·T), capped at T−1)."""
    base = method_spec(label, model, steps, inner_steps)
    total = int(base.config["num_steps"])
    skips = [min(total - 1, int(round(float(fraction) * total))) for fraction in skip_fractions]
    if len(set(skips)) != len(skips) or len(set(cfg_values)) != len(cfg_values):
        raise ValueError(f"grid points collide at T={total}: T_skip fractions {list(skip_fractions)} → {skips}, "
                         f"guidance_scale {list(cfg_values)}; use more steps or other --grid-skip/--grid-cfg values")
    specs = []
    for skip, guidance_scale in itertools.product(skips, cfg_values):
        specs.append(method_spec(label, model, steps, inner_steps, extra={"skip": skip, "guidance_scale": float(guidance_scale)}))
    return specs


def run_grid(pipe, model: str, item, work_dir: str | Path, label: str = "ef_ddpm", steps: int | None = None,
             skip_fractions=DEFAULT_SKIP_FRACTIONS, cfg_values=DEFAULT_CFG_TAR, seed: int = 0,
             rounds: int = 2) -> GridResult:
    """Time the grid both ways, alternating ``rounds`` times (each round in fresh directories) and keeping
    the fastest round of each mode, as the method/baseline comparison does: a garbage collection or a
    load spike during one mode's only run would otherwise decide the ratio."""
    work_dir = Path(work_dir)
    specs = grid_specs(model, label, steps, skip_fractions, cfg_values)
    pipe.scheduler = build_scheduler(specs[0].scheduler_cfg)
    # warm-up (lazy initialisation, caches) outside both timings
    run_job(pipe, specs[0], [item], work_dir / "warmup", seed)

    def timed(fn):
        """(fn's result, wall s, CPU s, NFE) of one call."""
        gc.collect()
        nfe_before, holder = pipe.counter.nfe, {}
        wall, cpu = time_call_cpu(lambda: holder.setdefault("out", fn()), pipe.device)
        return holder["out"], wall, cpu, pipe.counter.nfe - nfe_before

    def shared(folder: Path):
        computed = loaded = 0
        for spec in specs:
            summary, _ = run_job(pipe, spec, [item], folder, seed)
            computed += summary.inversions_computed
            loaded += summary.inversions_loaded
        return computed, loaded

    def independent(folder: Path):
        computed = 0
        for k, spec in enumerate(specs):
            summary, _ = run_job(pipe, spec, [item], folder / f"point_{k}", seed)
            computed += summary.inversions_computed
        return computed

    best: dict[str, tuple] = {}
    for round_index in range(max(1, rounds)):
        for mode, fn in (("shared", shared), ("independent", independent)):
            folder = work_dir / f"{mode}_{round_index}"
            shutil.rmtree(folder, ignore_errors=True)
            result = timed(lambda: fn(folder))
            if mode not in best or result[1] < best[mode][1]:
                best[mode] = result
    (computed, loaded), shared_seconds, shared_cpu, shared_nfe = best["shared"]
    independent_computed, independent_seconds, independent_cpu, independent_nfe = best["independent"]
    points = [{"skip": s.method.skip, "guidance_scale": s.method.guidance_scale} for s in specs]
    return GridResult(label, points, shared_seconds, independent_seconds, computed, loaded, independent_computed,
                      shared_nfe, independent_nfe, int(specs[0].config["num_steps"]),
                      {"shared_cpu_seconds": shared_cpu, "independent_cpu_seconds": independent_cpu,
                       "speedup_cpu": independent_cpu / shared_cpu if pipe.device.type == "cpu" else None,
                       "rounds": max(1, rounds)})
