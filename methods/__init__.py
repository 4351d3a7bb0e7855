"""Editing methods: one module per method plus the shared pieces.

- `methods.base`: the Method contract (typed hyperparameters, `invert`, `edit`) and `Inversion`.
- `methods.steps`: the diffusion step math every method shares (DDIM, DDIM inversion, DDPM posterior).
"""
