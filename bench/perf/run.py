"""``bench perf``: per method NFE, wall seconds, t_UNet at the same batch sizes, overhead ratio, peak
memory, the reference-shaped baseline side by side, and the ablation-grid reuse speedup.

Per method (all on one loaded pipeline; the scheduler is swapped per method config):
1. warm-up: the item once through the runner (``EditJob``) in a scratch results directory;
2. timed: the item through the runner in a fresh directory (inversion computed, edit, PNG and record
   written) — wall seconds, UNet calls by batch size (forward, backward), peak memory;
3. t_UNet(b) at exactly the batch sizes the method used (median of ``repeats``), measured right before
   and right after step 2 and averaged, forward+backward where it back-propagated;
   overhead = wall / Σ_b calls_b · t_UNet(b) (+ backward term);
4. the method's invert + edit and its reference-shaped baseline (``reference_loops``), alternated
   ``compare_repeats`` times on the same inputs: min seconds of each, their ratio, and the max abs
   difference of the outputs.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from bench.models import build_scheduler
from bench.perf import pairs
from bench.perf.grid import DEFAULT_CFG_TAR, DEFAULT_SKIP_FRACTIONS, GridResult, run_grid
from bench.perf.jobs import run_job
from bench.perf.measure import (
    PeakMemory,
    UNetLatency,
    measure_unet_timings,
    model_seconds,
    time_call_cpu,
)
from bench.perf.setup import load_model, method_labels, method_spec, source_tensor, write_item
from bench.perf.throughput import DEFAULT_BATCH_SIZES, Throughput, measure_throughput

EQUAL_ATOL = 1e-4  # fp32 outputs of a method and its baseline: max |Δ| ≤ 1e-4 · max(1, max |reference|)


@dataclass
class PerfOptions:
    model: str = "tiny_random"
    methods: list[str] | None = None
    steps: int | None = None
    inner_steps: int | None = None
    dtype: str = "float32"
    device: str = "cpu"
    compile: bool = False
    repeats: int = 5
    item_repeats: int = 3
    compare_repeats: int = 2
    baselines: bool = True
    grid: bool = True
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES  # items/s at each B (empty: skip)
    throughput_items: int = 16
    grid_method: str = "ef_ddpm"
    grid_skip: tuple[float, ...] = DEFAULT_SKIP_FRACTIONS
    grid_cfg: tuple[float, ...] = DEFAULT_CFG_TAR
    threads: int | None = None
    baseline_dtype: str | None = None  # None: the baselines run at --dtype on the same pipeline
    deterministic: bool = True
    seed: int = 0
    out: str | None = None
    command: str = ""


@dataclass
class MethodResult:
    label: str
    steps: int | None
    nfe: int
    nfe_backward: int
    forward_calls: dict[str, int]
    backward_calls: dict[str, int]
    wall_seconds: float
    inversion_seconds: float
    edit_seconds: float
    latency: dict
    model_seconds: float
    overhead: float
    peak_memory_bytes: int
    memory_increase_bytes: int
    cpu_seconds: float = math.nan
    cpu_latency: dict | None = None
    cpu_model_seconds: float = math.nan
    overhead_cpu: float | None = None  # CPU only: process CPU seconds / Σ calls·CPU t_UNet (load-robust)
    baseline: dict | None = None
    has_reference_loop: bool | None = None  # None: baselines not run; False: the method has none (opt-in)
    error: str | None = None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass
class PerfReport:
    options: dict
    machine: dict
    methods: list[MethodResult] = field(default_factory=list)
    grid: GridResult | None = None
    throughput: list[Throughput] = field(default_factory=list)
    grid_error: str | None = None
    total_seconds: float = 0.0

    def failures(self) -> list[str]:
        """Methods that errored, or whose fp32 output differs from the baseline beyond tolerance."""
        bad = [f"{m.label}: {m.error}" for m in self.methods if m.error]
        bad += [f"{t.label} throughput: {t.error}" for t in self.throughput if t.error]
        if self.grid_error:
            bad.append(f"grid: {self.grid_error}")
        for m in self.methods:
            if m.baseline and m.baseline.get("equal") is False:
                bad.append(f"{m.label}: output differs from its reference-shaped baseline by "
                           f"{m.baseline['max_abs_diff']:.3g} (tolerance {m.baseline['tolerance']:.3g})")
        return bad

    def as_dict(self) -> dict:
        return {"options": self.options, "machine": self.machine, "total_seconds": self.total_seconds,
                "methods": [m.as_dict() for m in self.methods],
                "grid": self.grid.as_dict() if self.grid else None, "grid_error": self.grid_error,
                "throughput": [t.as_dict() for t in self.throughput]}


# ----------------------------------------------------------------------------------------------
# machine facts


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def machine_info(device: torch.device, dtype: str) -> dict[str, Any]:
    from bench.env import _version, git_state

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "diffusers": _version("diffusers"), "transformers": _version("transformers"),
            "python": sys.version.split()[0], "device": str(device), "dtype": dtype,
            "git": git_state(), "load_average_start": os.getloadavg(),
            "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


# ----------------------------------------------------------------------------------------------
# one method


def steps_of(spec) -> int | None:
    return int(spec.config["num_steps"]) if "num_steps" in spec.config else None


def compare_with_baseline(pipe, spec, image, item, repeats: int, seed: int, reference_pipe=None) -> dict | None:
    """Alternate method and baseline runs; min seconds of each, ratio, and output difference.

    ``reference_pipe`` (default: ``pipe``) runs the baseline, e.g. an fp32 copy while the method runs in
    fp16 (the GPU acceptance comparison); outputs are then compared but not asserted equal."""
    pair = pairs.pair_for(spec.method, spec.label, seed)
    if pair is None:
        return None
    reference_pipe = reference_pipe or pipe
    reference_pipe.scheduler = build_scheduler(spec.scheduler_cfg)
    pipes = {"method": pipe, "reference": reference_pipe}
    images = {"method": image, "reference": image.to(reference_pipe.device, reference_pipe.dtype)}
    times: dict[str, list[float]] = {"method": [], "reference": []}
    cpu_times: dict[str, list[float]] = {"method": [], "reference": []}
    outputs: dict[str, torch.Tensor] = {}
    calls: dict[str, dict] = {}
    runs = {"method": pair.method_run, "reference": pair.reference_run}
    for round_index in range(max(1, repeats)):
        order = ("method", "reference") if round_index % 2 == 0 else ("reference", "method")
        for side in order:
            side_pipe = pipes[side]
            before = side_pipe.counter.snapshot()
            seconds, cpu = time_call_cpu(
                lambda side=side, side_pipe=side_pipe: outputs.__setitem__(side, runs[side](side_pipe, images[side],
                                                                                            item)),
                side_pipe.device)
            times[side].append(seconds)
            cpu_times[side].append(cpu)
            calls[side] = side_pipe.counter.since(before)
    method_out, reference_out = outputs["method"].float(), outputs["reference"].float()
    diff = (method_out - reference_out).abs().max().item()
    scale = max(1.0, reference_out.abs().max().item())
    fp32 = pipe.dtype == torch.float32 and reference_pipe.dtype == torch.float32
    return {"compares": pair.compares, "reference_dtype": str(reference_pipe.dtype).replace("torch.", ""),
            "method_seconds": min(times["method"]),
            "reference_seconds": min(times["reference"]),
            "speedup": min(times["reference"]) / min(times["method"]),
            "method_cpu_seconds": min(cpu_times["method"]), "reference_cpu_seconds": min(cpu_times["reference"]),
            "speedup_cpu": (min(cpu_times["reference"]) / min(cpu_times["method"])
                            if pipe.device.type == "cpu" else None),
            "method_calls": calls["method"]["forward_calls_by_batch"],
            "reference_calls": calls["reference"]["forward_calls_by_batch"],
            "method_backward_calls": calls["method"]["backward_calls_by_batch"],
            "reference_backward_calls": calls["reference"]["backward_calls_by_batch"],
            "max_abs_diff": diff, "output_scale": scale, "tolerance": EQUAL_ATOL * scale,
            "equal": (diff <= EQUAL_ATOL * scale) if fp32 else None, "rounds": max(1, repeats)}


def average_latency(first: UNetLatency, second: UNetLatency) -> UNetLatency:
    """Per batch size, the mean of two measurements (one if only one has it)."""
    def merge(a: dict, b: dict) -> dict:
        return {k: (a[k] + b[k]) / 2 if k in a and k in b else a.get(k, b.get(k)) for k in set(a) | set(b)}

    return UNetLatency(merge(first.forward, second.forward), merge(first.forward_backward, second.forward_backward))


def bench_method(pipe, spec, item, image, work_dir: Path, options: PerfOptions, reference_pipe=None) -> MethodResult:
    pipe.scheduler = build_scheduler(spec.scheduler_cfg)
    before = pipe.counter.snapshot()
    run_job(pipe, spec, [item], work_dir / "warmup" / spec.label, options.seed)
    warm = pipe.counter.since(before)
    # t_UNet is measured right before and right after the timed item(s) and the two medians averaged,
    # so a change of machine load during the item affects numerator and denominator alike
    batches = [int(b) for b in warm["forward_calls_by_batch"]]
    backward_batches = [int(b) for b in warm["backward_calls_by_batch"]]
    timings_before = measure_unet_timings(pipe, batches, options.repeats, backward_batches)

    best = None
    for repeat in range(max(1, options.item_repeats)):
        results_dir = work_dir / f"item{repeat}" / spec.label
        shutil.rmtree(results_dir, ignore_errors=True)
        before = pipe.counter.snapshot()
        with PeakMemory(pipe.device) as memory:
            holder = {}
            wall, cpu = time_call_cpu(
                lambda: holder.setdefault("out", run_job(pipe, spec, [item], results_dir, options.seed)), pipe.device)
        spent = pipe.counter.since(before)
        record = holder["out"][1][0]
        if best is None or wall < best[0]:
            best = (wall, spent, record, memory, cpu)
    wall, spent, record, memory, cpu = best
    forward_calls, backward_calls = spent["forward_calls_by_batch"], spent["backward_calls_by_batch"]
    timings_after = measure_unet_timings(pipe, [int(b) for b in forward_calls], options.repeats,
                                         [int(b) for b in backward_calls])
    latency = average_latency(timings_before.wall, timings_after.wall)
    cpu_latency = average_latency(timings_before.cpu, timings_after.cpu)
    denominator = model_seconds(forward_calls, backward_calls, latency)
    cpu_denominator = model_seconds(forward_calls, backward_calls, cpu_latency)
    baseline, has_reference_loop = None, None
    if options.baselines:
        baseline = compare_with_baseline(pipe, spec, image, item, options.compare_repeats, options.seed,
                                         reference_pipe)
        has_reference_loop = baseline is not None
    return MethodResult(
        label=spec.label, steps=steps_of(spec), nfe=spent["nfe"], nfe_backward=spent["nfe_backward"],
        forward_calls=forward_calls, backward_calls=backward_calls, wall_seconds=wall,
        inversion_seconds=float(record["cost"]["inversion_seconds"]), edit_seconds=float(record["cost"]["edit_seconds"]),
        latency=latency.as_dict(), model_seconds=denominator,
        overhead=wall / denominator if denominator > 0 else math.inf,
        cpu_seconds=cpu, cpu_latency=cpu_latency.as_dict(), cpu_model_seconds=cpu_denominator,
        overhead_cpu=cpu / cpu_denominator if pipe.device.type == "cpu" and cpu_denominator > 0 else None,
        peak_memory_bytes=memory.peak_bytes, memory_increase_bytes=memory.increase_bytes, baseline=baseline,
        has_reference_loop=has_reference_loop)


def failed_result(label: str, steps, err: Exception) -> MethodResult:
    return MethodResult(label, steps, 0, 0, {}, {}, math.nan, math.nan, math.nan, UNetLatency().as_dict(), math.nan,
                        math.nan, 0, 0, error=f"{type(err).__name__}: {err}")


def apply_compile(pipe) -> None:
    """torch.compile the UNet's forward (the module's hooks — the NFE counter — stay outside the graph)."""
    pipe.unet.forward = torch.compile(pipe.unet.forward)


def run_throughput(pipe, spec, work_dir: Path, options: PerfOptions, log) -> Throughput:
    """items/s at every ``options.batch_sizes`` (an error is reported, the other numbers are kept)."""
    try:
        result = measure_throughput(pipe, spec, work_dir, options.batch_sizes, options.throughput_items,
                                    seed=options.seed)
    except Exception as err:
        log(f"[perf] {spec.label} throughput FAILED: {type(err).__name__}: {err}")
        return Throughput(spec.label, options.throughput_items, {}, f"{type(err).__name__}: {err}")
    log(f"[perf] {spec.label} items/s: " + ", ".join(f"B={b} {v:.2f}" for b, v in result.items_per_second.items()))
    return result


def run_perf(options: PerfOptions, log=print) -> PerfReport:
    """Run the benchmark; returns the report (nothing written: see ``bench.perf.report``)."""
    from bench.job_setup import configure_runtime

    start = time.perf_counter()
    configure_runtime({"num_threads": options.threads, "deterministic": options.deterministic})
    labels = method_labels(options.methods)
    first = method_spec(options.grid_method, options.model, options.steps)  # any config: schedulers are swapped
    pipe = load_model(options.model, first.scheduler_cfg, device=options.device, dtype=options.dtype)
    if options.compile:
        apply_compile(pipe)
    reference_pipe = None
    if options.baselines and options.baseline_dtype and options.baseline_dtype != options.dtype:
        reference_pipe = load_model(options.model, first.scheduler_cfg, device=options.device,
                                    dtype=options.baseline_dtype)
    report = PerfReport(options=dict(options.__dict__), machine=machine_info(pipe.device, options.dtype))
    report.machine["model"] = pipe.identity()
    work_dir = Path(tempfile.mkdtemp(prefix="bench-perf-"))
    try:
        item = write_item(work_dir / "data", pipe.resolution)
        image = source_tensor(item, pipe.resolution, pipe.device, pipe.dtype)
        for label in labels:
            spec = None
            try:
                spec = method_spec(label, options.model, options.steps, options.inner_steps)
                log(f"[perf] {label} (steps {steps_of(spec)}) ...")
                result = bench_method(pipe, spec, item, image, work_dir, options, reference_pipe)
            except Exception as err:  # one broken method must not hide the others' numbers
                result = failed_result(label, steps_of(spec) if spec else None, err)
                log(f"[perf] {label} FAILED: {result.error}")
            else:
                log(f"[perf] {label}: wall {result.wall_seconds:.3f} s, NFE {result.nfe}, "
                    f"overhead {result.overhead:.3f}"
                    + (f" (CPU time: {result.overhead_cpu:.3f})" if result.overhead_cpu is not None else "")
                    + (f", baseline ×{result.baseline['speedup']:.2f} (Δ {result.baseline['max_abs_diff']:.2g})"
                       if result.baseline else "")
                    + (f", {pairs.NO_REFERENCE_LOOP}" if result.has_reference_loop is False else ""))
            report.methods.append(result)
            if options.batch_sizes and spec is not None:
                report.throughput.append(run_throughput(pipe, spec, work_dir, options, log))
        if options.grid:
            log(f"[perf] grid: {options.grid_method} {len(options.grid_skip)}×{len(options.grid_cfg)} ...")
            try:
                report.grid = run_grid(pipe, options.model, item, work_dir / "grid", options.grid_method,
                                       options.steps, options.grid_skip, options.grid_cfg, options.seed)
            except Exception as err:  # the per-method numbers are still written
                report.grid_error = f"{type(err).__name__}: {err}"
                log(f"[perf] grid FAILED: {report.grid_error}")
            else:
                log(f"[perf] grid: shared {report.grid.shared_seconds:.2f} s vs independent "
                    f"{report.grid.independent_seconds:.2f} s (×{report.grid.speedup:.2f})")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    report.total_seconds = time.perf_counter() - start
    report.machine["load_average_end"] = os.getloadavg()
    return report
