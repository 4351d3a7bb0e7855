"""The Method contract's checks, shared by tests/test_method_contract.py and tests/test_adding_a_method.py:
every method config the registry holds (conf/method/*.yaml and the
user config dirs, discovered, not listed) on the tiny pipeline with shortened schedules.

Each ``check_*`` function states one rule of the contract (methods/base.py, docs/adding-a-method.md) and
raises AssertionError when a method breaks it; the parametrised test runs them all per config, and
the last tests show that a method which breaks a rule (e.g. leaves its attention processors installed
after an error) fails them, and that a config dropped into a user config dir is covered too.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from bench.models import build_scheduler
from bench.perf.jobs import run_job
from bench.perf.setup import MethodSpec
from bench.perf.setup import method_spec as perf_method_spec
from methods.base import HyperparameterError, Method

STEPS, INNER = 2, 1  # N and the optimisation methods' inner iterations: enough for every code path


def method_spec(label: str) -> MethodSpec:
    """The registry's config for ``label`` on the tiny model, N = STEPS (T_skip keeps its fraction)."""
    return perf_method_spec(label, "tiny_random", STEPS, INNER)


def run(pipe, method: Method, item, image, seed: int) -> tuple[torch.Tensor, int, int]:
    """invert + edit with seeded generators → (image, inversion NFE, edit NFE) as the pipeline counted them."""
    before = pipe.counter.snapshot()
    inversion = method.invert(pipe, image, item.source_prompt, torch.Generator("cpu").manual_seed(seed))
    inversion_nfe, before = pipe.counter.since(before)["nfe"], pipe.counter.snapshot()
    edited = method.edit(pipe, inversion, item, torch.Generator("cpu").manual_seed(seed + 1))
    return edited, inversion_nfe, pipe.counter.since(before)["nfe"]


# ----------------------------------------------------------------------------------------------
# the rules


def check_output_and_seeds(pipe, method: Method, item, image) -> None:
    """(3, H, W) in [-1, 1], finite; the same seed gives the same image; a different seed gives a different
    image exactly when the method declares itself stochastic; the counted NFE equal ``declared_nfe``."""
    processors = dict(pipe.unet.attn_processors)
    first, inversion_nfe, edit_nfe = run(pipe, method, item, image, seed=0)
    name = type(method).__name__
    assert_processors_unchanged(pipe, processors, f"{name}: attention processors not restored after invert + edit")
    assert first.shape == (3, pipe.resolution, pipe.resolution), f"{name}: output shape {tuple(first.shape)}"
    assert torch.isfinite(first).all(), f"{name}: non-finite output"
    assert first.min() >= -1 and first.max() <= 1, f"{name}: output outside [-1, 1]"
    again, _, _ = run(pipe, method, item, image, seed=0)
    assert torch.equal(first, again), f"{name}: the same seed gave a different image"
    other, _, _ = run(pipe, method, item, image, seed=7)
    same = torch.equal(first, other)
    assert same != method.stochastic, (
        f"{name}.stochastic={method.stochastic} but another seed gave {'the same' if same else 'a different'} image")
    declared = method.declared_nfe(item)
    if declared is not None:
        assert (inversion_nfe, edit_nfe) == tuple(declared), (
            f"{name}: counted (inversion, edit) NFE {(inversion_nfe, edit_nfe)}, declared {tuple(declared)}")


def edit_only_variant(method: Method) -> Method | None:
    """The method with one edit-only numeric hyperparameter changed to another valid value (None if it has none)."""
    for field in dataclasses.fields(method):
        value = getattr(method, field.name)
        if field.name in method.inversion_fields or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for candidate in (value + 1, value / 2, value - 1) if isinstance(value, float) else (value - 1, value + 1):
            try:
                return dataclasses.replace(method, **{field.name: type(value)(candidate)})
            except HyperparameterError:
                continue
    return None


def check_inversion_reuse(pipe, spec: MethodSpec, item, results_dir: Path) -> None:
    """``inversion_fields`` are fields; a job with one edit-only hyperparameter changed loads the cached
    inversion from disk and spends no inversion NFE (runner: bench.edit_job.EditJob)."""
    names = {f.name for f in dataclasses.fields(spec.method)}
    assert set(spec.method.inversion_fields) <= names, (
        f"{spec.label}: inversion_fields {set(spec.method.inversion_fields) - names} are not hyperparameters")
    variant = edit_only_variant(spec.method)
    if variant is None:
        return
    first, _ = run_job(pipe, spec, [item], results_dir)
    assert first.inversions_computed == 1
    second, records = run_job(pipe, dataclasses.replace(spec, method=variant), [item], results_dir)
    assert (second.ok, second.inversions_computed, second.inversions_loaded) == (1, 0, 1), (
        f"{spec.label}: an edit-only change recomputed the inversion ({second.as_dict()})")
    changed = [r for r in records if r["method"]["hparams"] == variant.hparams()]
    assert changed and changed[0]["cost"]["inversion_cached"]
    assert second.nfe == changed[0]["cost"]["edit_nfe"], f"{spec.label}: inversion NFE spent on a cached inversion"


def check_ranges(method: Method) -> None:
    """Every numeric hyperparameter rejects an absurd value (−10⁹; NaN for floats) with a
    HyperparameterError that names it."""
    for field in dataclasses.fields(method):
        value = getattr(method, field.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        for absurd in (-10**9,) if isinstance(value, int) else (-1e9, math.nan):
            with pytest.raises(HyperparameterError, match=field.name):
                dataclasses.replace(method, **{field.name: absurd})


def check_processors_restored(pipe, method: Method, item, image) -> None:
    """An exception inside ``edit`` (here: from its first UNet call) leaves the UNet's attention
    processors exactly as they were."""
    inversion = method.invert(pipe, image, item.source_prompt, torch.Generator("cpu").manual_seed(0))
    before = dict(pipe.unet.attn_processors)

    def fail(module, args, kwargs):
        raise RuntimeError("injected failure")

    handle = pipe.unet.register_forward_pre_hook(fail, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="injected failure"):
            method.edit(pipe, inversion, item, torch.Generator("cpu").manual_seed(1))
    finally:
        handle.remove()
    assert_processors_unchanged(pipe, before,
                                f"{type(method).__name__}: attention processors not restored after an error")


def assert_processors_unchanged(pipe, before: dict, message: str) -> None:
    after = pipe.unet.attn_processors
    changed = [name for name in before if after[name] is not before[name]]
    assert not changed, f"{message}: {changed[:3]}"


def check_contract(pipe, spec: MethodSpec, item, image, results_dir: Path) -> None:
    pipe.scheduler = build_scheduler(spec.scheduler_cfg)
    check_processors_restored(pipe, spec.method, item, image)
    check_output_and_seeds(pipe, spec.method, item, image)
    check_ranges(spec.method)
    check_inversion_reuse(pipe, spec, item, results_dir)


# ----------------------------------------------------------------------------------------------
# every config
