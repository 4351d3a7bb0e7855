"""Metrics: one class per protocol variant, each with a distinct id (see `bench.metrics.base`)."""
