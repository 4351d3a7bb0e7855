"""Analysis experiments: studies of a method's noise space rather than method × dataset edit jobs.

An experiment whose config has an ``analysis:`` node (a ``_target_`` config of a class in this package)
runs here instead of ``bench.runner``: ``bench experiment=ef_noise_statistics``. The class is built with
the node's other keys as arguments and its ``run(context)`` does the study; the ``AnalysisContext``
(``bench.analyses.context``) hands it the configured method, its baselines composed exactly as
``bench method=<name> model=<model>`` would compose them, the dataset items, the pipeline, cached
inversions (the runner's keys and files), the configured metrics, and a ``Section`` that writes tables
(csv + md), figures (PNG) and the report section into ``<results_dir>/analyses/<name>/``. At the end the
HTML report of the results dir is rebuilt (``bench.report`` renders every analysis section it finds).

Analyses in this package: ``noise_statistics``, ``gaussian_2d``, ``image_shift``, ``color_manipulation``
(the EF-DDPM paper's noise-space experiments; docs/experiments.md).
"""

from __future__ import annotations

import logging
import time

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def run_analysis(cfg: DictConfig):
    """Run the analysis of a composed experiment config; returns what its ``run`` returns."""
    from bench.analyses.context import AnalysisContext
    from bench.config import instantiate
    from bench.job_setup import configure_runtime
    from bench.report import build_report

    configure_runtime(cfg.runtime)
    spec = OmegaConf.to_container(cfg.analysis, resolve=True)
    name = spec.pop("name", None) or str(cfg.run_name)
    spec.pop("title", None)  # read by the context
    analysis = instantiate(spec, what="analysis")
    context = AnalysisContext(cfg, name)
    start = time.perf_counter()
    result = analysis.run(context)
    seconds = time.perf_counter() - start
    context.section.note(f"Wall time of this run: {seconds:.1f} s ({context.describe_runtime()}).")
    context.section.write()
    report = build_report(context.results_dir)
    print(f"{name}: {seconds:.1f} s; outputs in {context.section.directory}; report: {report}")
    return result
