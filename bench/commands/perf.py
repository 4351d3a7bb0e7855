"""``bench perf``: per-method cost (NFE, seconds, t_UNet, overhead ratio, peak memory), the
reference-shaped baselines side by side, and the ablation-grid reuse speedup (docs/performance.md).

    bench perf --model toy                                   # every method config, toy world, CPU
    bench perf --model tiny_random --steps 4 --inner-steps 2 # a quick smoke run
    bench perf --model sd14_random --device cuda --dtype float16 --baseline-dtype float32   # GPU acceptance

Writes perf.md, methods.csv, grid.csv and perf.json to ``--out`` (default
results/perf/<model>_<device>_<dtype>/). Exit status 1 when a method failed or, in fp32, its output
differs from its reference-shaped baseline beyond tolerance.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x.strip())


def _methods(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [m for value in values for m in value.split(",") if m]


def command_line(args) -> str:
    """The full command with every option spelled out (defaults included), to re-run it exactly."""
    parts = ["bench", "perf"]
    for name, value in vars(args).items():
        if name in ("func", "command") or value is None or value is False:
            continue
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif isinstance(value, list):
            parts += [flag, *map(str, value)]
        else:
            parts += [flag, str(value)]
    return shlex.join(parts)


def perf(args) -> int:
    from bench.perf.report import write_report
    from bench.perf.run import PerfOptions, run_perf

    device = args.device
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    options = PerfOptions(
        model=args.model, methods=_methods(args.methods), steps=args.steps, inner_steps=args.inner_steps,
        dtype=args.dtype, device=device, compile=args.compile, repeats=args.repeats, item_repeats=args.item_repeats,
        compare_repeats=args.compare_repeats, baselines=not args.no_baselines, grid=not args.no_grid,
        batch_sizes=() if args.no_throughput else tuple(int(b) for b in args.batch_sizes.split(",")),
        throughput_items=args.throughput_items,
        grid_method=args.grid_method, grid_skip=_floats(args.grid_skip), grid_cfg=_floats(args.grid_cfg),
        threads=args.threads, baseline_dtype=args.baseline_dtype, deterministic=not args.no_deterministic, seed=args.seed,
        command=command_line(args),
    )
    report = run_perf(options, log=lambda msg: print(msg, flush=True))
    out = Path(args.out) if args.out else Path("results") / "perf" / f"{args.model}_{device}_{args.dtype}"
    paths = write_report(report, out)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    failures = report.failures()
    for failure in failures:
        print(f"FAILED {failure}", file=sys.stderr)
    return 1 if failures else 0


def register(subparsers) -> None:
    from bench.perf.grid import DEFAULT_CFG_TAR, DEFAULT_SKIP_FRACTIONS

    parser = subparsers.add_parser("perf", help="cost per method (NFE, seconds, overhead), baselines, grid reuse",
                                   description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny_random",
                        help="tiny_random | toy | sd14_random (SD-v1.4-shaped, random weights) | any conf/model entry")
    parser.add_argument("--methods", nargs="*", help="method configs (conf/method/*.yaml; default: all), "
                                                     "space- or comma-separated")
    parser.add_argument("--steps", type=int, help="override every method's step count (T_skip keeps its fraction)")
    parser.add_argument("--inner-steps", type=int, help="cap the optimisation methods' inner iterations")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet forward")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats of each t_UNet measurement (median)")
    parser.add_argument("--item-repeats", type=int, default=3, help="timed runs of the item per method (the fastest counts)")
    parser.add_argument("--compare-repeats", type=int, default=2,
                        help="alternated method/baseline runs (min of each)")
    parser.add_argument("--no-baselines", action="store_true", help="skip the reference-shaped baselines")
    parser.add_argument("--no-grid", action="store_true", help="skip the ablation-grid measurement")
    parser.add_argument("--batch-sizes", default="1,4,16",
                        help="item batch sizes B of the items/s measurement (runtime.batch_size), comma-separated")
    parser.add_argument("--throughput-items", type=int, default=16, help="items per items/s measurement")
    parser.add_argument("--no-throughput", action="store_true", help="skip the items/s measurement")
    parser.add_argument("--grid-method", default="ef_ddpm", help="method config of the grid (T_skip × guidance_scale)")
    parser.add_argument("--grid-skip", default=",".join(str(x) for x in DEFAULT_SKIP_FRACTIONS),
                        help="T_skip values as fractions of T, comma-separated")
    parser.add_argument("--grid-cfg", default=",".join(str(x) for x in DEFAULT_CFG_TAR),
                        help="guidance_scale values, comma-separated")
    parser.add_argument("--baseline-dtype", choices=["float32", "float16", "bfloat16"],
                        help="run the baselines on a second copy of the model in this dtype (GPU acceptance: "
                             "--dtype float16 --baseline-dtype float32); default: --dtype, same pipeline")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--no-deterministic", action="store_true",
                        help="allow non-deterministic kernels and TF32 (default: as runtime.deterministic=true)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default results/perf/<model>_<device>_<dtype>/)")
    parser.set_defaults(func=perf)
