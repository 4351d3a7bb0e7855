"""The ``bench`` command.

``bench [hydra overrides]`` runs one job (``-m`` for a sweep), e.g.::

    bench model=tiny_random method=sdedit dataset=ef_examples method.strength=0.5
    bench -m method.strength=0.5,0.8

``bench <command> ...`` runs a subcommand. Every module in ``bench/commands/`` that defines
``register(subparsers)`` is one (its file name is the command name): ``bench ls``, ``bench tables``,
``bench data``, ``bench weights``, ...
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger("bench")


def command_names() -> list[str]:
    import bench.commands

    return sorted(m.name for m in pkgutil.iter_modules(bench.commands.__path__) if not m.name.startswith("_"))


def run_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench", description="editbench subcommands")
    subparsers = parser.add_subparsers(dest="command", required=True)
    module = importlib.import_module(f"bench.commands.{argv[0]}")
    module.register(subparsers)
    args = parser.parse_args(argv)
    from bench.errors import friendly_errors

    with friendly_errors():
        return int(args.func(args) or 0)


def hydra_main() -> None:
    import hydra
    from omegaconf import DictConfig

    from bench.config import CONF_DIR

    @hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
    def _run(cfg: DictConfig) -> None:
        from hydra.core.hydra_config import HydraConfig

        from bench import quiet
        from bench.errors import friendly_errors

        quiet.configure()  # again: Hydra has (re)configured logging, and launcher workers start fresh
        hydra_cfg = HydraConfig.get()
        with friendly_errors():
            if cfg.get("analysis"):  # an analysis experiment (bench/analyses), not a method × dataset edit job
                from bench.analyses import run_analysis

                run_analysis(cfg)
                return
            from bench.runner import run_from_config

            summary = run_from_config(cfg)  # checks everything the job needs first (bench/preflight.py)
        print_job_end(cfg, summary, single=str(hydra_cfg.mode) == "RunMode.RUN")

    _run()


def print_job_end(cfg, summary, single: bool) -> None:
    """Where the job's results are and what it produced: one line per job; for a single job also the
    summary table (a multirun prints the merged table once, at its end: bench/callbacks.py)."""
    results_dir = Path(cfg.paths.results_dir)
    print(f"done: {summary.ok} ok, {summary.skipped} skipped (already done), {summary.failed} failed; "
          f"{summary.nfe} UNet evaluations in {summary.seconds:.1f} s; results: {results_dir}",
          flush=True)  # a launcher's worker process may be stopped without flushing its buffered stdout
    table = results_dir / "tables" / "summary.md"
    if single and table.is_file():
        print(table.read_text(encoding="utf-8"))
        print(f"tables: {table}\nfailures: {results_dir / 'tables' / 'failures.csv'}" if summary.failed
              else f"tables: {table}")
        print(f"report: bench report {results_dir}")


def print_usage() -> None:
    print(__doc__.strip())
    print("\ncommands: " + ", ".join(command_names()))
    print("config groups: model, method, dataset, metrics, experiment, logger, launcher (bench ls <group>)")
    print("hydra help: bench --hydra-help; resolved config: bench --cfg job [overrides]")


def main() -> None:
    os.environ.setdefault("EDITBENCH_ROOT", str(REPO_ROOT))
    # names this command's run/sweep dirs (conf/config.yaml), so commands started in the same second never
    # share one; joblib workers inherit it and write into the launcher's sweep dir
    os.environ["EDITBENCH_RUN_ID"] = str(os.getpid())
    argv = sys.argv[1:]
    from bench import preflight, quiet

    if argv[:2] not in (["weights", "fetch"], ["data", "fetch"]):  # only the fetch commands go online by default
        preflight.apply_offline_default(argv)
    quiet.configure(verbose=quiet.wants_verbose(argv))
    if argv and argv[0] in ("-h", "--help"):
        print_usage()
        return
    if argv and argv[0] in command_names():
        sys.exit(run_command(argv))
    from bench.overrides import check_method_overrides

    check_method_overrides(argv)
    hydra_main()


if __name__ == "__main__":
    main()
