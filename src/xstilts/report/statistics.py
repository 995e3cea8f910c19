"""Paired bootstrap over test examples, percentile intervals and Holm's step-down correction.

Every comparison in the report is a mean of per-example differences in correctness, so one primitive
suffices: resample the test examples with replacement and recompute the means. Differences that share a
test set are resampled with the same indices, which keeps them paired (arm vs baseline, and arms that are
averaged into a group).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm

CONFIDENCE = 0.95
ALPHA = 0.05


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile-bootstrap interval and two-sided p-value (H0: value is 0)."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float


def resample_means(values: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of the row means of `values` (rows x examples), shape (n_resamples, rows).

    One draw of example indices per replicate is shared by all rows, so rows stay paired."""
    n = values.shape[1]
    indices = rng.integers(0, n, size=(n_resamples, n))
    offsets = n * np.arange(n_resamples)[:, None]
    counts = np.bincount((indices + offsets).ravel(), minlength=n_resamples * n).reshape(n_resamples, n)
    return counts @ values.T / n


def estimate(value: float, replicates: np.ndarray, confidence: float = CONFIDENCE) -> Estimate:
    """Percentile interval of the replicates; p-value from the normal approximation with the bootstrap SE.

    p = 2 * Phi(-|value| / SE*), SE* the standard deviation of the replicates. Unlike counting replicates
    beyond zero, this resolves p-values below 1 / n_resamples, which Holm correction over many tests needs."""
    low, high = np.quantile(replicates, [(1 - confidence) / 2, (1 + confidence) / 2])
    se = float(np.std(replicates, ddof=1))
    if se > 0:
        p_value = float(2 * norm.sf(abs(value) / se))
    else:
        p_value = 1.0 if value == 0 else 0.0
    return Estimate(float(value), float(low), float(high), p_value)


def paired_differences(arm: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per-example change in correctness of `arm` over `baseline`, pooled over seeds by averaging.

    Both are 0/1 correctness of shape (seeds, examples); row s of both is the same seed and column i the
    same test example."""
    arm, baseline = np.atleast_2d(np.asarray(arm, dtype=float)), np.atleast_2d(np.asarray(baseline, dtype=float))
    if arm.shape != baseline.shape:
        raise ValueError(f"arm and baseline shapes differ: {arm.shape} vs {baseline.shape}")
    return (arm - baseline).mean(axis=0)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (reject where adjusted < alpha), in the input order."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    factors = len(p) - np.arange(len(p))
    adjusted = np.minimum(np.maximum.accumulate(factors * p[order]), 1.0)
    result = np.empty_like(p)
    result[order] = adjusted
    return result
