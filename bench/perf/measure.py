"""Timing, UNet latency, overhead ratio and peak memory for ``bench perf``.

Overhead model (docs/performance.md): the physical cost of a method is its UNet evaluations. With
``forward_calls[b]`` UNet calls of batch b and ``backward_calls[b]`` backward passes through the UNet
at batch b (``bench.models.UNetCounter``),

    model_seconds = Σ_b forward_calls[b] · t_fwd(b) + Σ_b backward_calls[b] · (t_fwd+bwd(b) − t_fwd(b))

where t_fwd(b) is the median latency of one no-grad forward at batch b and t_fwd+bwd(b) that of a
forward with autograd plus its backward (the optimisation methods' inner iteration). The overhead
ratio is wall / model_seconds: 1.0 means every second went into the UNet.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call_cpu(fn: Callable[[], object], device: torch.device) -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of ``fn``.

    On a shared CPU machine with one torch thread, CPU seconds are the work done whatever the other
    processes do (waiting for a core is not counted), so ratios of CPU seconds stay meaningful when
    wall-clock ratios are blurred by the machine's load."""
    synchronize(device)
    start, cpu_start = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return time.perf_counter() - start, time.process_time() - cpu_start


def median_seconds_cpu(fn: Callable[[], object], device: torch.device, repeats: int,
                       warmup: int = 2) -> tuple[float, float]:
    """(median wall, median CPU) seconds over ``repeats`` timed calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}: expected at least 1")
    for _ in range(warmup):
        fn()
    samples = [time_call_cpu(fn, device) for _ in range(repeats)]
    return statistics.median(w for w, _ in samples), statistics.median(c for _, c in samples)


# ----------------------------------------------------------------------------------------------
# UNet latency


@dataclass
class UNetLatency:
    """Median seconds of one UNet call per batch size (forward; forward+backward where measured)."""

    forward: dict[int, float] = field(default_factory=dict)
    forward_backward: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"forward": {str(b): s for b, s in sorted(self.forward.items())},
                "forward_backward": {str(b): s for b, s in sorted(self.forward_backward.items())}}


@dataclass
class UNetTimings:
    """The same measurement in wall seconds and in process CPU seconds."""

    wall: UNetLatency = field(default_factory=UNetLatency)
    cpu: UNetLatency = field(default_factory=UNetLatency)


def unet_inputs(pipe, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Latents, a timestep (as the methods pass it: an element of scheduler.timesteps) and embeddings."""
    generator = torch.Generator("cpu").manual_seed(batch)
    size = pipe.latent_size
    channels = int(pipe.unet.config.in_channels)
    latents = torch.randn(batch, channels, size, size, generator=generator).to(pipe.device, pipe.dtype)
    pipe.scheduler.set_timesteps(50)
    t = pipe.scheduler.timesteps[len(pipe.scheduler.timesteps) // 2]
    text = pipe.encode_prompts(["a photo of a cat"] * batch)
    return latents, t, text


def measure_unet_timings(pipe, batch_sizes, repeats: int = 5, backward_batch_sizes=(),
                         warmup: int = 2) -> UNetTimings:
    """t_UNet(b) for every b (no-grad forward, the methods' default attention processors) and, for the
    b in ``backward_batch_sizes``, a forward with autograd w.r.t. the text embedding (as Null-text
    inversion optimises ∅) plus the backward of a mean-square loss, each as the median in wall and in
    process CPU seconds. UNet calls made here are removed from ``pipe.counter`` again, so measuring does
    not change a method's counts."""
    counter = pipe.counter
    saved_forward, saved_backward = counter.forward_calls.copy(), counter.backward_calls.copy()
    timings = UNetTimings()
    try:
        for batch in sorted(set(int(b) for b in batch_sizes)):
            latents, t, text = unet_inputs(pipe, batch)

            def forward(latents=latents, t=t, text=text):
                with torch.no_grad():
                    return pipe.unet(latents, t, encoder_hidden_states=text).sample

            timings.wall.forward[batch], timings.cpu.forward[batch] = median_seconds_cpu(forward, pipe.device,
                                                                                         repeats, warmup)
        for batch in sorted(set(int(b) for b in backward_batch_sizes)):
            latents, t, text = unet_inputs(pipe, batch)

            def forward_backward(latents=latents, t=t, text=text):
                embedding = text.detach().clone().requires_grad_(True)
                with torch.enable_grad():
                    out = pipe.unet(latents, t, encoder_hidden_states=embedding).sample
                    out.float().square().mean().backward()
                return embedding.grad

            timings.wall.forward_backward[batch], timings.cpu.forward_backward[batch] = median_seconds_cpu(
                forward_backward, pipe.device, repeats, warmup)
    finally:
        counter.forward_calls.clear()
        counter.forward_calls.update(saved_forward)
        counter.backward_calls.clear()
        counter.backward_calls.update(saved_backward)
    return timings


def model_seconds(forward_calls: Mapping, backward_calls: Mapping, latency: UNetLatency) -> float:
    """Σ_b forward_calls[b]·t_fwd(b) + Σ_b backward_calls[b]·(t_fwd+bwd(b) − t_fwd(b)) (module doc).

    Keys may be ints or strings (the counter's snapshot uses strings)."""
    total = 0.0
    for batch, calls in forward_calls.items():
        batch = int(batch)
        if batch not in latency.forward:
            raise KeyError(f"no forward latency measured at batch {batch} (have {sorted(latency.forward)})")
        total += int(calls) * latency.forward[batch]
    for batch, calls in backward_calls.items():
        batch = int(batch)
        if batch not in latency.forward_backward or batch not in latency.forward:
            raise KeyError(f"no forward+backward latency measured at batch {batch} "
                           f"(have {sorted(latency.forward_backward)})")
        total += int(calls) * (latency.forward_backward[batch] - latency.forward[batch])
    return total


def overhead_ratio(wall_seconds: float, forward_calls: Mapping, backward_calls: Mapping,
                   latency: UNetLatency) -> float:
    """wall / model_seconds (module doc); inf when the method made no UNet call."""
    denominator = model_seconds(forward_calls, backward_calls, latency)
    return float("inf") if denominator <= 0 else wall_seconds / denominator


# ----------------------------------------------------------------------------------------------
# memory


def current_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakMemory:
    """Peak memory while the block runs.

    CUDA: ``torch.cuda.max_memory_allocated`` (reset on entry). CPU: the process RSS sampled every
    ``interval`` seconds by a background thread (RSS includes the loaded weights; ``increase_bytes``
    is the peak minus the RSS at entry, i.e. what the block added)."""

    def __init__(self, device: torch.device, interval: float = 0.005) -> None:
        self.device, self.interval = device, interval
        self.peak_bytes = 0
        self.start_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = int(torch.cuda.memory_allocated(self.device))
        else:
            self.start_bytes = self.peak_bytes = current_rss_bytes()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            if self._thread is not None:
                self._thread.join()
            self.peak_bytes = max(self.peak_bytes, current_rss_bytes())

    @property
    def increase_bytes(self) -> int:
        return max(0, self.peak_bytes - self.start_bytes)
