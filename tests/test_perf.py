"""bench perf: overhead arithmetic, reference-shaped baselines at equal outputs, grid reuse counters,
the command end to end, and the SD-v1.4-shaped model's shapes. Tiny pipeline, few steps: these check
correctness, never speed (performance figures come from `bench perf` itself, docs/performance.md)."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, replace
from types import SimpleNamespace

import pytest
import torch

from bench.models import build_scheduler
from bench.perf import pairs, reference_hooks
from bench.perf.grid import grid_specs, run_grid
from bench.perf.measure import UNetLatency, measure_unet_timings, model_seconds, overhead_ratio
from bench.perf.report import method_rows
from bench.perf.run import EQUAL_ATOL, compare_with_baseline, failed_result
from bench.perf.setup import MethodSpec, method_labels, method_spec, override_steps, source_tensor, write_item

STEPS, INNER = 4, 2
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def perf_pipe():
    from bench.perf.setup import load_model

    torch.manual_seed(0)
    return load_model("tiny_random", method_spec("ef_ddpm", "tiny_random", STEPS).scheduler_cfg)


@pytest.fixture(scope="module")
def perf_item(perf_pipe, tmp_path_factory):
    item = write_item(tmp_path_factory.mktemp("perf-item"), perf_pipe.resolution)
    return item, source_tensor(item, perf_pipe.resolution, perf_pipe.device, perf_pipe.dtype)


# ----------------------------------------------------------------------------------------------
# overhead arithmetic


def test_model_seconds_and_overhead_on_a_synthetic_case():
    latency = UNetLatency(forward={1: 0.010, 2: 0.015}, forward_backward={1: 0.030})
    forward, backward = {"1": 10, "2": 5}, {"1": 4}
    # 10·10 ms + 5·15 ms + 4·(30 − 10) ms = 255 ms
    assert model_seconds(forward, backward, latency) == pytest.approx(0.255)
    assert overhead_ratio(0.306, forward, backward, latency) == pytest.approx(1.2)
    assert overhead_ratio(0.255, {1: 10, 2: 5}, {1: 4}, latency) == pytest.approx(1.0)  # int keys too
    assert overhead_ratio(1.0, {}, {}, latency) == float("inf")
    with pytest.raises(KeyError, match="batch 4"):
        model_seconds({"4": 1}, {}, latency)
    with pytest.raises(KeyError, match="forward\\+backward"):
        model_seconds({"2": 1}, {"2": 1}, latency)


def test_measure_unet_leaves_the_counter_alone(perf_pipe):
    before = perf_pipe.counter.snapshot()
    latency = measure_unet_timings(perf_pipe, [1, 2], repeats=1, backward_batch_sizes=[1], warmup=0).wall
    assert perf_pipe.counter.snapshot() == before
    assert set(latency.forward) == {1, 2} and set(latency.forward_backward) == {1}
    assert all(s > 0 for s in [*latency.forward.values(), *latency.forward_backward.values()])


def test_override_steps_keeps_the_skip_fraction():
    cfg = override_steps({"num_steps": 100, "skip": 36, "num_inner_steps": 10}, 25, inner_steps=3)
    assert cfg == {"num_steps": 25, "skip": 9, "num_inner_steps": 3}
    assert override_steps({"num_steps": 100, "skip": 99}, 4)["skip"] == 3  # at most T − 1
    assert override_steps({"num_steps": 50, "strength": 0.8}, 7) == {"num_steps": 7,
                                                                                "strength": 0.8}


# ----------------------------------------------------------------------------------------------
# baselines


@pytest.mark.parametrize("label", method_labels())
def test_baseline_and_method_agree(label, perf_pipe, perf_item):
    """Every method config whose class opted in to a reference-shaped baseline agrees with it in fp32
    (max |Δ| within 1e-4·max(1, max|ref|)) while the baseline calls the UNet in its own shape; a config
    whose class has none is one of those documented as such."""
    item, image = perf_item
    spec = method_spec(label, "tiny_random", STEPS, INNER)
    perf_pipe.scheduler = build_scheduler(spec.scheduler_cfg)
    pair = pairs.pair_for(spec.method, label)
    if pair is None:
        pytest.skip(f"{label}: {pairs.NO_REFERENCE_LOOP} (opt-in)")
    counter = perf_pipe.counter
    before = counter.snapshot()
    ours = pair.method_run(perf_pipe, image, item)
    ours_calls = counter.since(before)
    before = counter.snapshot()
    theirs = pair.reference_run(perf_pipe, image, item)
    their_calls = counter.since(before)
    assert ours.shape == theirs.shape
    assert torch.isfinite(ours).all()
    diff = (ours - theirs).abs().max().item()
    assert diff <= EQUAL_ATOL * max(1.0, theirs.abs().max().item()), f"{label}: max |Δ| = {diff}"
    if label in ("ef_ddpm", "ddpm_naive", "ef_ddpm_p2p", "ddim_ef", "ddim_p2p_ef"):
        # separate ∅/c passes: twice the calls at half the batch, same NFE
        assert sum(their_calls["forward_calls_by_batch"].values()) == 2 * sum(
            ours_calls["forward_calls_by_batch"].values())
        assert their_calls["nfe"] == ours_calls["nfe"]


def test_a_subclass_does_not_inherit_its_parents_baseline(perf_pipe, perf_item):
    """Baselines are opt-in per exact class: a method built on DDIM + P2P gets no baseline (an
    isinstance dispatch used to pair it with ddim_p2p's loop, whose output differs) and the report
    says it has no reference-shaped loop."""
    from methods.ddim_p2p import DDIMP2P

    @dataclass
    class SourceWeightedP2P(DDIMP2P):
        name = "source_weighted_p2p"

    item, image = perf_item
    parent = method_spec("ddim_p2p", "tiny_random", STEPS)
    child = MethodSpec("source_weighted_p2p", SourceWeightedP2P(num_steps=STEPS), parent.scheduler_cfg, {})
    assert pairs.pair_for(parent.method, "ddim_p2p") is not None
    assert compare_with_baseline(perf_pipe, child, image, item, repeats=1, seed=0) is None
    rows = method_rows(SimpleNamespace(methods=[
        failed_result("source_weighted_p2p", STEPS, RuntimeError("x")),
        replace(failed_result("source_weighted_p2p", STEPS, RuntimeError("x")), has_reference_loop=False)]))
    assert [row["baseline_calls"] for row in rows] == ["-", pairs.NO_REFERENCE_LOOP]


def test_baseline_comparison_detects_a_different_edit(perf_pipe, perf_item):
    """The agreement above is not vacuous: a method with another guidance_scale is far outside the tolerance."""
    item, image = perf_item
    spec = method_spec("ef_ddpm", "tiny_random", STEPS)
    other = method_spec("ef_ddpm", "tiny_random", STEPS, extra={"guidance_scale": spec.method.guidance_scale - 2})
    perf_pipe.scheduler = build_scheduler(spec.scheduler_cfg)
    ours = pairs.pair_for(spec.method, "ef_ddpm").method_run(perf_pipe, image, item)
    theirs = pairs.pair_for(other.method, "ef_ddpm").reference_run(perf_pipe, image, item)
    assert (ours - theirs).abs().max().item() > 100 * EQUAL_ATOL * max(1.0, theirs.abs().max().item())


def test_reference_attention_is_explicit_everywhere(perf_pipe, perf_item):
    """The baseline's hook materialises probabilities in every layer and leaves the ∅ pass unedited."""
    from methods.p2p import AttentionController, attention_layers

    class Counting(AttentionController):
        def __init__(self):
            super().__init__(1)
            self.seen = 0

        def needs_probabilities(self, layer):
            return True

        def process(self, probs, layer):
            self.seen += 1
            return probs

    layers = list(attention_layers(perf_pipe.unet).values())
    inner = Counting()
    proxy = reference_hooks.ReferenceAttention(inner, 1)
    assert all(proxy.needs_probabilities(layer) for layer in layers)
    proxy.unconditional_pass = True
    probs = torch.rand(1, 2, 4, 4)
    assert proxy.process(probs, layers[0]) is probs and inner.seen == 0
    proxy.unconditional_pass = False
    proxy.process(probs, layers[0])
    assert inner.seen == 1


# ----------------------------------------------------------------------------------------------
# grid reuse


def test_grid_reuse_does_one_inversion_for_nine_points(perf_pipe, perf_item, tmp_path):
    item, _ = perf_item
    steps, fractions, cfgs = 6, (0.2, 0.35, 0.5), (5.0, 7.0, 9.0)
    result = run_grid(perf_pipe, "tiny_random", item, tmp_path, "ef_ddpm", steps, fractions, cfgs)
    assert len(result.points) == 9
    assert (result.shared_inversions_computed, result.shared_inversions_loaded) == (1, 8)
    assert result.independent_inversions_computed == 9
    # NFE from the UNet counter: inversion 2T (CFG), each edit 2(T − T_skip)
    edits = sum(2 * (steps - p["skip"]) for p in result.points)
    assert {p["skip"] for p in result.points} == {1, 2, 3}  # round(0.2·6), round(0.35·6), round(0.5·6)
    assert result.shared_nfe == 2 * steps + edits
    assert result.independent_nfe == 9 * 2 * steps + edits
    assert result.speedup > 0


def test_a_failing_grid_still_writes_the_method_table(tmp_path):
    from bench.cli import run_command

    out = tmp_path / "perf"
    code = run_command(["perf", "--model", "tiny_random", "--methods", "sdedit", "--steps", "4", "--repeats", "1",
                        "--compare-repeats", "1", "--grid-skip", "0.3,0.36,0.4", "--threads", "1", "--out", str(out),
                        "--no-throughput"])
    assert code == 1
    assert "Grid failed: ValueError: grid points collide" in (out / "perf.md").read_text()
    assert [r["method"] for r in csv.DictReader((out / "methods.csv").open())] == ["sdedit"]


def test_grid_points_must_be_distinct():
    with pytest.raises(ValueError, match="collide"):
        grid_specs("tiny_random", "ef_ddpm", 4, (0.3, 0.36, 0.4), (9.0, 12.0, 15.0))


# ----------------------------------------------------------------------------------------------
# the command


def test_perf_command_end_to_end(tmp_path, capsys):
    from bench.cli import run_command

    out = tmp_path / "perf"
    code = run_command(["perf", "--model", "tiny_random", "--methods", "ef_ddpm,ddim_p2p", "null_text_p2p",
                        "--steps", "5", "--inner-steps", "2", "--repeats", "1", "--compare-repeats", "1",
                        "--grid-skip", "0.2,0.4,0.6", "--grid-cfg", "5", "--threads", "1", "--out", str(out),
                        "--batch-sizes", "1,2", "--throughput-items", "2"])
    assert code == 0
    markdown = (out / "perf.md").read_text()
    assert "bench perf --model tiny_random" in markdown and "torch threads" in markdown
    assert "load average" in markdown and "## Ablation grid" in markdown
    rows = list(csv.DictReader((out / "methods.csv").open()))
    assert [r["method"] for r in rows] == ["ef_ddpm", "ddim_p2p", "null_text_p2p"]
    for row in rows:
        assert not row["error"]
        assert float(row["overhead"]) > 0 and float(row["wall_s"]) > 0 and row["equal"] == "True"
        assert float(row["overhead_cpu"]) > 0 and float(row["speedup_cpu"]) > 0
    by_method = {r["method"]: r for r in rows}
    assert by_method["ef_ddpm"]["nfe_fwd"] == str(2 * 5 + 2 * (5 - 2))  # T=5, skip round(36·5/100)=2
    assert int(by_method["null_text_p2p"]["nfe_bwd"]) > 0
    data = json.loads((out / "perf.json").read_text())
    assert data["grid"]["shared_inversions_computed"] == 1 and data["grid"]["shared_inversions_loaded"] == 2
    assert data["machine"]["dtype"] == "float32" and data["machine"]["device"] == "cpu"
    grid = list(csv.DictReader((out / "grid.csv").open()))
    assert len(grid) == 1 and float(grid[0]["speedup"]) > 0
    assert "## Items per second by item batch size B" in markdown
    assert [t["label"] for t in data["throughput"]] == ["ef_ddpm", "ddim_p2p", "null_text_p2p"]
    assert all(set(t["items_per_second"]) == {"1", "2"} and not t["error"] for t in data["throughput"])


def test_perf_baselines_in_another_dtype(tmp_path):
    """--baseline-dtype runs the baselines on a second copy of the model (GPU acceptance: fp16 method vs
    fp32 baseline); outputs are compared but equality is only asserted when both are fp32."""
    from bench.cli import run_command

    out = tmp_path / "perf"
    code = run_command(["perf", "--model", "tiny_random", "--methods", "sdedit", "--steps", "4", "--repeats", "1",
                        "--compare-repeats", "1", "--no-grid", "--no-throughput", "--dtype", "bfloat16", "--baseline-dtype", "float32",
                        "--threads", "1", "--out", str(out)])
    assert code == 0
    data = json.loads((out / "perf.json").read_text())
    baseline = data["methods"][0]["baseline"]
    assert baseline["reference_dtype"] == "float32" and baseline["equal"] is None
    assert 0 < baseline["max_abs_diff"] < 0.5  # bf16 vs fp32: close, not equal
    assert "baselines run in float32" in (out / "perf.md").read_text()


# ----------------------------------------------------------------------------------------------
# the SD-v1.4-shaped model


def test_sd_shaped_components_have_sd14_parameter_counts():
    from bench.perf.sd_shaped import SD14_PARAMETERS, build_modules

    modules = build_modules("meta")  # shapes only, no memory
    counts = {name: sum(p.numel() for p in module.parameters()) for name, module in modules.items()}
    assert counts == SD14_PARAMETERS
    assert modules["unet"].config.sample_size == 64 and modules["vae"].config.scaling_factor == 0.18215


@pytest.mark.slow
@pytest.mark.gpu
def test_sd_shaped_fp16_gives_no_nan():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from bench.perf.sd_shaped import build_sd14_random_pipeline
    from bench.perf.setup import SOURCE_PROMPT, TARGET_PROMPT

    spec = method_spec("ef_ddpm", "sd14_random", steps=10)
    pipe = build_sd14_random_pipeline(spec.scheduler_cfg, device="cuda", dtype="float16")
    image = torch.rand(1, 3, 512, 512, device="cuda", dtype=torch.float16) * 2 - 1
    generator = torch.Generator("cpu").manual_seed(0)
    inversion = spec.method.invert(pipe, image, SOURCE_PROMPT, generator)
    from bench.data.item import EditItem

    item = EditItem("x/0", "x", "unused.png", SOURCE_PROMPT, TARGET_PROMPT)
    edited = spec.method.edit(pipe, inversion, item, generator)
    assert all(torch.isfinite(t).all() for t in inversion.tensors.values())
    assert torch.isfinite(edited).all() and edited.shape == (3, 512, 512)
