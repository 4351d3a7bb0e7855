"""Toy trainer smoke test: every stage runs a few steps through the CLI into a tmp dir, exports loadable
weights, and a stopped-then-resumed run reaches exactly the state of an uninterrupted one."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

TINY = ["--pool-size", "48", "--eval-size", "16", "--ckpt-every", "1", "--samples", "4", "--sample-steps", "2",
        "--threads", "1"]
STEPS = {"clip": 2, "vae": 2, "vae-decoder": 2, "unet": 2, "eval-clip": 2, "eval-vit": 2, "eval-alex": 2}
BATCH = {"clip": 8, "vae": 2, "vae-decoder": 2, "unet": 4, "eval-clip": 8, "eval-vit": 4, "eval-alex": 4}


def _parse(argv):
    from bench.commands import toy

    parser = argparse.ArgumentParser()
    toy.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def _train_args(out, weights, stage="all", steps=STEPS, extra=()):
    argv = ["toy", "train", "--stage", stage, "--out", str(out), "--weights", str(weights), *TINY, *extra]
    for name, value in steps.items():
        argv += [f"--steps-{name}", str(value), f"--batch-{name}", str(BATCH[name])]
    return _parse(argv)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("toytrain")
    args = _train_args(root / "out", root / "weights")
    assert args.func(args) == 0
    return root


def test_every_stage_exports_loadable_weights(trained):
    from bench.models import load_pipeline
    from bench.toyworld import evaluators as ev

    weights = trained / "weights"
    for stage in ("clip", "vae", "vae_decoder", "unet", "eval_clip", "eval_vit", "eval_alex"):
        report = json.loads((trained / "out" / stage / "report.json").read_text())
        assert report["step"] == 2
    pipe = load_pipeline({"path": str(weights / "toy-sd"), "image_encoder": {"subfolder": "image_encoder"}},
                         {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                          "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1})
    assert pipe.unet.dtype == torch.float32 and pipe.resolution == 64 and pipe.latent_size == 16
    emb = pipe.encode_prompts(["a red circle on a navy background", ""])
    assert emb.shape == (2, 77, 128)
    assert pipe.get_image_encoder().config.image_size == 64
    model, _, tokenizer = ev.load_clip(weights / "evaluators")
    assert model.encode_text(tokenizer(["a red circle on a navy background"])).shape == (1, 128)
    assert ev.load_vit(weights / "evaluators")(torch.zeros(1, 3, 64, 64)).shape == (1, ev.NUM_CLASSES)
    assert ev.load_alexnet(weights / "evaluators").features(torch.zeros(1, 3, 64, 64)).shape[1] == 256


def test_report_runs_on_trained_weights(trained):
    args = _parse(["toy", "report", "--out", str(trained / "out"), "--weights", str(trained / "weights"), *TINY,
                   "--parts", "evaluators", "vae", "generator", "gen_clip", "--grid", str(trained / "grid.png")])
    assert args.func(args) == 0
    assert (trained / "grid.png").is_file()


@pytest.mark.parametrize("stage", ["unet", "eval_alex"])
def test_stopped_and_resumed_training_equals_uninterrupted(trained, tmp_path, stage):
    """Kill-equivalent: stop at the first checkpoint (--max-minutes 0), run the same command again."""
    from bench.toyworld.train.common import Checkpoint, TrainConfig

    steps = {k: (4 if k == stage.replace("_", "-") else v) for k, v in STEPS.items()}
    weights = tmp_path / "weights"

    def run(out, extra=()):
        import shutil

        # the unet stage needs the clip / vae exports of the module run
        for dep in ("clip", "vae", "vae_decoder"):
            if not (out / dep).exists():
                shutil.copytree(trained / "out" / dep, out / dep)
        args = _train_args(out, weights, stage=stage, steps=steps, extra=extra)
        assert args.func(args) == 0
        return Checkpoint(TrainConfig(out=out), stage).load()

    straight = run(tmp_path / "a")
    first = run(tmp_path / "b", extra=("--max-minutes", "0"))
    assert first["step"] == 1
    resumed = run(tmp_path / "b")
    assert straight["step"] == resumed["step"] == 4
    for group in ("modules", "ema"):
        for name, state in straight[group].items():
            for key, value in state.items():
                assert torch.equal(value, resumed[group][name][key]), (group, name, key)


def test_from_weights_continues_the_exported_unet(trained, tmp_path):
    """--from-weights with an empty --out: the text encoder / VAE come from the exported pipeline and the
    UNet starts from its exported weights (so zero further steps reproduce them up to fp16 rounding)."""
    import shutil

    from diffusers import UNet2DConditionModel

    weights = tmp_path / "weights"
    shutil.copytree(trained / "weights" / "toy-sd", weights / "toy-sd")
    unet = UNet2DConditionModel.from_pretrained(weights / "toy-sd" / "unet")
    with torch.no_grad():  # mark the exported weights so a fresh init cannot pass for them
        for p in unet.parameters():
            p.add_(0.05)
    unet.save_pretrained(weights / "toy-sd" / "unet")
    before = unet.state_dict()
    args = _train_args(tmp_path / "out", weights, stage="generator", extra=("--from-weights",),
                       steps={**STEPS, "unet": 1})
    assert args.func(args) == 0
    assert not (tmp_path / "out" / "clip" / "ckpt.pt").exists() and not (tmp_path / "out" / "vae" / "ckpt.pt").exists()
    after = UNet2DConditionModel.from_pretrained(weights / "toy-sd" / "unet").state_dict()
    # one small step from the exported weights: close to them, not a fresh random init (0.05 away)
    diffs = [float((after[k].float() - before[k].float()).abs().max()) for k in before]
    assert max(diffs) < 0.01
