"""Run-level inference for contrasts between arms: training variance over seeds plus test-item sampling.

The unit of inference is the training run. A *contrast* weights the scores of arms on languages
(w[arm, language]; e.g. an arm minus the baseline on the language average, or the mean of the English arms
minus the mean of the low-resource arms). A run's score is the mean over test items of a per-item value in
[0, 1] (0/1 correctness for accuracy, a per-item F1 for span QA); nothing below assumes 0/1 values (there is
no binomial variance: every variance is estimated from the per-item values themselves). A contrast's
estimate is the mean over seeds of the per-seed contrast

    y_s = sum_{a,l} w[a,l] * score(arm a, seed s, language l),

computed from runs that share seed s (seed blocking: whatever a seed does to every arm alike cancels,
because the weights of a contrast sum to zero). Two sources of variance enter its standard error:

- training: the sample variance of y_s over seeds, divided by the number of seeds. It holds everything that
  differs between runs (initialisation, data order, dropout) and the within-run noise of single test items;
- test items: the effect varies from item to item, and the test set is one sample of items. Its variance is
  estimated by moments: the variance over items of the seed-averaged item effect, less the part of it that
  is seed noise (the items' variance across seeds divided by the number of seeds), over the number of items.
  When the languages of a test set are translations of the same items (`parallel: true` in the task YAML,
  as for XNLI), an item is one unit across all languages; otherwise each language's items are their own
  stratum.

The statistic (estimate / SE) is referred to a t distribution with seeds - 1 degrees of freedom: with few
seeds its tails are wide, as they should be. (Welch-Satterthwaite degrees of freedom, which count the item
part's many items, were liberal in simulation: 2x the nominal rate at p < 0.003 with 4 seeds, as the
estimated df grows exactly when the seed variance is underestimated. Seeds - 1 is conservative when the item
part is large, and exact when training variance dominates, as in real fine-tuning studies.)
With a single seed nothing can be tested (`resolvable` is False): training variance is then unknown. Simulated studies with planted truth
(tests/test_statistics_calibration.py) check that the false-positive rate stays at alpha and that intervals
cover a planted effect.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
ALPHA = 0.05
POWER = 0.80
MIN_SEEDS = 2  # the seed-level variance needs at least one degree of freedom
MAX_PLANNED_SEEDS = 1000


@dataclass(frozen=True)
class Estimate:
    """A contrast's estimate with its interval and two-sided p-value (H0: the contrast is 0).

    train_variance is the variance of one seed's contrast (so training adds train_variance / seeds to the
    squared standard error); item_variance is the item-sampling part of the squared standard error for the
    test sets as evaluated. p_value, the interval and df are NaN when the design cannot resolve anything."""

    value: float
    ci_low: float
    ci_high: float
    p_value: float
    se: float
    df: float
    seeds: int
    train_variance: float
    item_variance: float

    @property
    def resolvable(self) -> bool:
        """Whether the design can test anything: enough seeds and a positive standard error."""
        return not math.isnan(self.p_value)

    def significant(self, alpha: float = ALPHA) -> bool:
        return self.resolvable and self.p_value < alpha

    def mde(self, power: float = POWER, alpha: float = ALPHA) -> float:
        """Minimum detectable effect (two-sided test at `alpha`, with `power`) of this design."""
        return minimum_detectable_effect(self.se, self.df, power, alpha)

    def as_dict(self) -> dict:
        return {**asdict(self), "mde_80": self.mde()}


def minimum_detectable_effect(se: float, df: float, power: float = POWER, alpha: float = ALPHA) -> float:
    """(t_{1-alpha/2, df} + t_{power, df}) * SE: the true effect the test detects with probability `power`."""
    if not (df > 0 and se >= 0):
        return float("nan")
    return float((stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se)


def _item_variance(item_effects: np.ndarray) -> float:
    """Item-sampling variance of the mean effect from a (seeds x items) array of per-item contrasts.

    Var over items of the seed-mean effect, less the seed noise it contains (mean over items of the variance
    across seeds, over the number of seeds), divided by the number of items; not below 0."""
    seeds, items = item_effects.shape
    if items < 2:
        return 0.0
    total = float(item_effects.mean(axis=0).var(ddof=1))
    if seeds > 1:
        centred = item_effects - item_effects.mean(axis=1, keepdims=True)
        total -= float(centred.var(axis=0, ddof=1).mean()) / seeds
    return max(total, 0.0) / items


def contrast(scores: list[np.ndarray], weights: np.ndarray, parallel: bool,
             confidence: float = CONFIDENCE) -> Estimate:
    """Estimate the contrast `weights` (arms x languages) from per-language arrays of per-item scores.

    scores[l] has shape (arms, seeds, items of language l); row order of arms and seeds is the same in
    every language, and for `parallel` test sets item i is the same item in every language (equal counts)."""
    weights = np.asarray(weights, dtype=float)
    seeds = scores[0].shape[1]
    per_seed = sum(np.einsum("a,asi->s", weights[:, l], c) / c.shape[2] for l, c in enumerate(scores))
    value = float(per_seed.mean())
    train_variance = float(per_seed.var(ddof=1)) if seeds > 1 else float("nan")
    # per-item effects (seeds x items), each item weighted as it enters the estimate
    effects = [np.einsum("a,asi->si", weights[:, l], c) for l, c in enumerate(scores)]
    if parallel:
        item_variance = _item_variance(sum(effects))  # items are shared: one stratum
    else:
        item_variance = sum(_item_variance(effect) for effect in effects)
    if seeds < MIN_SEEDS:
        nan = float("nan")
        return Estimate(value, nan, nan, nan, nan, nan, seeds, train_variance, item_variance)
    train_part = train_variance / seeds
    se = math.sqrt(train_part + item_variance)
    df = float(seeds - 1)
    if se == 0:
        p_value = 1.0 if value == 0 else 0.0
        return Estimate(value, value, value, p_value, 0.0, df, seeds, train_variance, item_variance)
    half_width = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    p_value = float(2 * stats.t.sf(abs(value) / se, df))
    return Estimate(value, value - half_width, value + half_width, p_value, se, df, seeds, train_variance,
                    item_variance)


def seeds_needed(estimate: Estimate, effect: float, item_scale: float = 1.0, power: float = POWER,
                 alpha: float = ALPHA) -> int | None:
    """The fewest seeds whose design detects `effect` with `power`, from a pilot's variances.

    `item_scale` multiplies the pilot's item variance (pilot items / planned items when the planned study
    evaluates more items). None when even MAX_PLANNED_SEEDS seeds do not suffice (the test set is too small)."""
    if math.isnan(estimate.train_variance):
        return None
    item = estimate.item_variance * item_scale
    for seeds in range(MIN_SEEDS, MAX_PLANNED_SEEDS + 1):
        train_part = estimate.train_variance / seeds
        se = math.sqrt(train_part + item)
        if minimum_detectable_effect(se, seeds - 1, power, alpha) <= abs(effect):
            return seeds
    return None


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (reject where adjusted < alpha), in the input order; NaN stays NaN."""
    p = np.asarray(p_values, dtype=float)
    result = np.full_like(p, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    if not len(tested):
        return result
    order = tested[np.argsort(p[tested])]
    factors = len(order) - np.arange(len(order))
    result[order] = np.minimum(np.maximum.accumulate(factors * p[order]), 1.0)
    return result


def linearized_ratio(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """Per-item values whose mean is the ratio of sums R = sum(a) / sum(b), as corpus-level span F1 is
    (a = 2 x entities found, b = gold + predicted entities): z_i = R + (a_i - R b_i) / mean(b), the ratio's
    first-order (delta-method) influence. Their mean is R exactly and their variance over items is the delta
    method's, so item resampling treats the ratio like a mean. With no entities anywhere, R = 0, as the task's
    corpus F1 and seqeval's `f1_score` have it."""
    a, b = np.asarray(numerators, float), np.asarray(denominators, float)
    if not b.sum():
        return np.zeros_like(a)
    ratio = a.sum() / b.sum()
    return ratio + (a - ratio * b) / b.mean()
