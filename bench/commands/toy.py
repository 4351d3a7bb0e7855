"""``bench toy {train,report}``: train the toy world's networks, measure their quality.

    bench toy train --stage all                 # every network, from seed 0, into bench/toyworld/weights
    bench toy train --stage unet --steps-unet 12000 --from-weights   # continue the committed UNet
    bench toy report --samples 256 --grid docs/toy_samples.png       # quality of the committed weights
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _default_out() -> Path:
    root = Path(os.environ.get("EDITBENCH_ROOT", Path(__file__).resolve().parents[2]))
    return Path(os.environ.get("EDITBENCH_CACHE", root / ".cache" / "editbench")) / "toy-train"


def _config(args):
    from bench.toyworld.train.common import DEFAULT_BATCH, DEFAULT_LR, DEFAULT_STEPS, STAGES, TrainConfig

    steps, batch, lr = dict(DEFAULT_STEPS), dict(DEFAULT_BATCH), dict(DEFAULT_LR)
    for stage in STAGES:
        for table, name in ((steps, "steps"), (batch, "batch"), (lr, "lr")):
            value = getattr(args, f"{name}_{stage}", None)
            if value is not None:
                table[stage] = value
    return TrainConfig(out=Path(args.out), weights=Path(args.weights), seed=args.seed, steps=steps, batch=batch,
                       lr=lr, pool_size=args.pool_size, ckpt_every=args.ckpt_every, eval_size=args.eval_size,
                       samples=args.samples, sample_steps=args.sample_steps, cfg_scale=args.cfg,
                       fp16=not args.fp32, max_minutes=args.max_minutes)


def _threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def train(args) -> int:
    from bench.toyworld.train.stages import run

    _threads(args)
    report = run(_config(args), args.stage, from_weights=args.from_weights)
    print(json.dumps(report, indent=2, default=str))
    return 0


def report(args) -> int:
    from bench.toyworld.report import quality_report

    _threads(args)
    result = quality_report(_config(args), parts=args.parts, grid=Path(args.grid) if args.grid else None)
    print(json.dumps(result, indent=2))
    if args.json:
        from bench.io import write_json

        write_json(args.json, result)
    return 0


def _common(parser) -> None:
    from bench.toyworld.evaluators import WEIGHTS_DIR

    parser.add_argument("--out", default=str(_default_out()), help="checkpoints, render pools, logs")
    parser.add_argument("--weights", default=str(WEIGHTS_DIR), help="where final weights are exported/read")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch default)")
    parser.add_argument("--pool-size", type=int, default=16384, help="training renders per pool")
    parser.add_argument("--ckpt-every", type=int, default=50)
    parser.add_argument("--eval-size", type=int, default=2000, help="held-out renders for accuracy / PSNR")
    parser.add_argument("--samples", type=int, default=256, help="generated samples for the UNet report")
    parser.add_argument("--sample-steps", type=int, default=50, help="DDIM steps for generated samples")
    parser.add_argument("--cfg", type=float, default=5.0, help="guidance scale for generated samples")
    parser.add_argument("--fp32", action="store_true", help="export fp32 weights (default fp16)")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="stop each stage at the first checkpoint after this many minutes (resume later)")


def register(subparsers) -> None:
    from bench.toyworld.train.common import STAGE_GROUPS, STAGES

    parser = subparsers.add_parser("toy", help="train / report the toy world's networks")
    sub = parser.add_subparsers(dest="toy_command", required=True)

    p_train = sub.add_parser("train", help="train toy networks (resumable: re-run the same command to continue)")
    _common(p_train)
    p_train.add_argument("--stage", default="all", choices=sorted(STAGE_GROUPS))
    p_train.add_argument("--from-weights", action="store_true",
                         help="with no checkpoints in --out, continue from the committed weights")
    for stage in STAGES:
        flag = stage.replace("_", "-")
        p_train.add_argument(f"--steps-{flag}", dest=f"steps_{stage}", type=int, default=None)
        p_train.add_argument(f"--batch-{flag}", dest=f"batch_{stage}", type=int, default=None)
        p_train.add_argument(f"--lr-{flag}", dest=f"lr_{stage}", type=float, default=None)
    p_train.set_defaults(func=train)

    p_report = sub.add_parser("report", help="measure the committed toy weights (accuracy, PSNR, samples)")
    _common(p_report)
    p_report.add_argument("--parts", nargs="+", default=["evaluators", "vae", "generator"],
                          choices=["evaluators", "vae", "generator", "gen_clip"])
    p_report.add_argument("--grid", default=None, help="write a sample grid PNG here")
    p_report.add_argument("--json", default=None, help="also write the report as JSON here")
    p_report.set_defaults(func=report)
