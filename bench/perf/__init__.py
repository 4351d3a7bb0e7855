"""Performance tooling behind ``bench perf`` (docs/performance.md).

- ``measure``: timing helpers, t_UNet(b) at a batch size (forward, forward+backward), the
  overhead ratio wall / Σ_b calls_b · t_UNet(b), peak memory during a block.
- ``setup``: the model (``tiny_random``, ``toy``, ``sd14_random``), method configs from the registry
  (with ``--steps`` overrides), the synthetic edit item.
- ``reference_loops``: reference-shaped baselines (the loop shape of each reference implementation,
  same step math) run side by side with the methods.
- ``grid``: a k-point ablation grid through ``EditJob`` (one inversion) vs k independent runs.
- ``sd_shaped``: an SD-v1.4-shaped pipeline with random weights, built in code.
- ``run``: the benchmark itself; ``report``: markdown/CSV/JSON tables with the machine recorded.
"""
