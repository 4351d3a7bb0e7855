"""Statistics for benchmark tables: pure functions on numpy arrays, seeded, no I/O.

Items are the unit of resampling: every edit item is an independent draw from the dataset, methods
are run on the same items, so

- a mean over items has standard error ``s / sqrt(n)`` (``standard_error``) and a percentile
  bootstrap interval over items (``bootstrap_ci``);
- for a stochastic method run with k seeds, the spread of the k per-seed means is reported as a
  separate component, ``std(seed means) / sqrt(k)`` (``seed_standard_error``);
- method A vs method B is a paired comparison of the per-item differences d_i = a_i − b_i on the
  shared items (``paired_test``): mean difference, its bootstrap interval and the two-sided p-value of
  a sign-flip permutation test (under H0 each d_i is symmetric around 0, so its sign is exchangeable);
- rank agreement between two orderings of the same methods is Kendall's τ_b and Spearman's ρ, with
  the exact permutation p-value for small n (``rank_agreement``).

How to read each number, and what it does not claim: docs/metrics.md, "Statistics".
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95  # confidence level of every interval
ALPHA = 0.05  # significance level of every test (two-sided)
N_BOOT = 4000  # bootstrap resamples
N_PERM = 20000  # Monte-Carlo sign flips when exact enumeration is too large
EXACT_FLIPS_MAX_N = 16  # 2^16 sign patterns enumerated exactly
EXACT_RANKS_MAX_N = 8  # 8! permutations enumerated exactly
SEED = 0


def _finite(values) -> np.ndarray:
    x = np.asarray(values, dtype=float).ravel()
    return x[np.isfinite(x)]


def standard_error(values) -> float:
    """s / sqrt(n) over the finite values (sample std, ddof=1); NaN with fewer than two values."""
    x = _finite(values)
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def seed_standard_error(seed_means) -> float:
    """Standard error of the overall mean due to the seed: std of the k per-seed means / sqrt(k)."""
    return standard_error(seed_means)


def bootstrap_means(values, n_boot: int = N_BOOT, seed: int = SEED) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of the finite values; the same ``seed`` gives
    the same resamples on every machine (numpy's PCG64)."""
    x = _finite(values)
    if len(x) == 0:
        return np.full(n_boot, math.nan)
    rng = np.random.default_rng(seed)
    return x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)


def bootstrap_ci(values, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over items; (NaN, NaN) with fewer than two values."""
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_ci: level={level}; expected 0 < level < 1")
    if len(_finite(values)) < 2:
        return math.nan, math.nan
    means = bootstrap_means(values, n_boot, seed)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class Summary:
    """Mean over items with its precision: ``se`` over items, bootstrap interval over items."""

    n: int
    mean: float
    se: float
    ci_low: float
    ci_high: float


def summarize(item_values, level: float = LEVEL, n_boot: int = N_BOOT, seed: int = SEED) -> Summary:
    """n, mean, se and bootstrap interval of one row's item values (NaN skipped)."""
    x = _finite(item_values)
    low, high = bootstrap_ci(x, level, n_boot, seed)
    return Summary(len(x), float(x.mean()) if len(x) else math.nan, standard_error(x), low, high)


# ----------------------------------------------------------------------------------------------
# paired comparison


@dataclass(frozen=True)
class PairedResult:
    """A − B on the items both have: mean difference, its se and bootstrap interval, and the two-sided
    sign-flip permutation p-value (``exact``: all 2^n sign patterns enumerated)."""

    n: int
    mean_a: float
    mean_b: float
    diff: float
    se: float
    ci_low: float
    ci_high: float
    p_value: float
    exact: bool

    def significant(self, alpha: float = ALPHA) -> bool:
        return bool(self.p_value < alpha)


def sign_flip_p_value(diffs, n_perm: int = N_PERM, seed: int = SEED) -> tuple[float, bool]:
    """Two-sided p-value of H0 "each d_i is symmetric around 0" with statistic |mean(d)|.

    Exact (all 2^n sign patterns, the observed one included) for n <= EXACT_FLIPS_MAX_N; otherwise
    ``n_perm`` seeded random patterns with p = (1 + #{|T*| >= |T|}) / (1 + n_perm)."""
    d = _finite(diffs)
    n = len(d)
    if n == 0:
        return math.nan, True
    observed = abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))  # |T*| equal to |T| up to rounding counts as >=
    if n <= EXACT_FLIPS_MAX_N:
        signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        stats = np.abs(signs @ d) / n
        return float((stats >= observed - tol).mean()), True
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, n_perm, 2000):  # chunks bound the memory at 2000 × n
        signs = rng.choice(np.array([-1.0, 1.0]), size=(min(2000, n_perm - start), n))
        count += int((np.abs(signs @ d) / n >= observed - tol).sum())
    return (1 + count) / (1 + n_perm), False


def paired_test(a, b, level: float = LEVEL, n_boot: int = N_BOOT, n_perm: int = N_PERM,
                seed: int = SEED) -> PairedResult:
    """Paired comparison of per-item values ``a`` and ``b`` (same length, same item order; pairs with a
    NaN on either side are dropped)."""
    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"paired_test: a has {a.size} values, b has {b.size}; expected one pair per item")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    d = a - b
    low, high = bootstrap_ci(d, level, n_boot, seed)
    p, exact = sign_flip_p_value(d, n_perm, seed)
    return PairedResult(len(d), _mean(a), _mean(b), _mean(d), standard_error(d), low, high, p, exact)


# ----------------------------------------------------------------------------------------------
# rank agreement


def ranks(values) -> np.ndarray:
    """Ranks 1..n, ties get their average rank."""
    x = np.asarray(values, dtype=float)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tied = x == v
        r[tied] = r[tied].mean()
    return r


def kendall_tau(x, y) -> float:
    """Kendall's τ_b = (C − D) / sqrt((n0 − n1)(n0 − n2)), n0 = n(n−1)/2, n1/n2 = tied pairs in x/y."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(x), k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    denom = math.sqrt(float((sx != 0).sum()) * float((sy != 0).sum()))
    return float((sx * sy).sum() / denom) if denom > 0 else math.nan


def spearman_rho(x, y) -> float:
    """Spearman's ρ: Pearson correlation of the (average) ranks."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx**2).sum() * (ry**2).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else math.nan


@dataclass(frozen=True)
class RankAgreement:
    """τ_b and ρ of two orderings of the same n methods, with exact two-sided permutation p-values
    (NaN when n > EXACT_RANKS_MAX_N or n < 3)."""

    n: int
    tau: float
    rho: float
    p_tau: float
    p_rho: float


def rank_agreement(x, y) -> RankAgreement:
    """Agreement of ``x`` and ``y`` (one value per method, same order; pairs with a NaN dropped).

    ``x`` and ``y`` must have the same direction (both higher-is-better or both lower)."""
    x, y = np.asarray(x, dtype=float).ravel(), np.asarray(y, dtype=float).ravel()
    if x.shape != y.shape:
        raise ValueError(f"rank_agreement: {x.size} vs {y.size} values; expected one pair per method")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    n = len(x)
    if n < 2:
        return RankAgreement(n, math.nan, math.nan, math.nan, math.nan)
    tau, rho = kendall_tau(x, y), spearman_rho(x, y)
    p_tau = p_rho = math.nan
    if 3 <= n <= EXACT_RANKS_MAX_N and np.isfinite([tau, rho]).all():
        perms = [np.asarray(p) for p in itertools.permutations(range(n))]
        null_tau = np.array([kendall_tau(x, y[p]) for p in perms])
        null_rho = np.array([spearman_rho(x, y[p]) for p in perms])
        p_tau = float((np.abs(null_tau) >= abs(tau) - 1e-12).mean())
        p_rho = float((np.abs(null_rho) >= abs(rho) - 1e-12).mean())
    return RankAgreement(n, tau, rho, p_tau, p_rho)


def _mean(values: np.ndarray) -> float:
    return float(values.mean()) if len(values) else math.nan
