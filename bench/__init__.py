"""editbench: a reproducible benchmark harness for diffusion-based real-image editing."""

__version__ = "0.1.0"
