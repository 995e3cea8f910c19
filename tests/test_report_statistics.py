"""The report's statistics on constructed data with known answers (calibration on simulated studies lives in
test_statistics_calibration.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from xstilts.report.statistics import ALPHA, contrast, holm, linearized_ratio, minimum_detectable_effect, seeds_needed

ARM_MINUS_BASELINE = np.array([[-1.0], [1.0]])  # arms (baseline, arm) x one language


def test_estimate_and_training_variance_by_hand() -> None:
    """No item heterogeneity: the arm fixes exactly k_s of the baseline's errors with seed s."""
    items, fixes = 100, [3, 5, 7, 9]
    baseline = np.zeros((len(fixes), items))
    arm = baseline.copy()
    for seed, k in enumerate(fixes):
        arm[seed, seed * 10: seed * 10 + k] = 1  # different items per seed: no item is fixed by every seed
    estimate = contrast([np.stack([baseline, arm])], ARM_MINUS_BASELINE, parallel=False)
    per_seed = np.array(fixes) / items
    assert estimate.value == pytest.approx(per_seed.mean())
    assert estimate.train_variance == pytest.approx(per_seed.var(ddof=1))
    assert estimate.df == len(fixes) - 1
    se = math.sqrt(per_seed.var(ddof=1) / len(fixes) + estimate.item_variance)
    assert estimate.se == pytest.approx(se)
    assert estimate.p_value == pytest.approx(2 * stats.t.sf(per_seed.mean() / se, 3))
    assert estimate.ci_low == pytest.approx(per_seed.mean() - stats.t.ppf(0.975, 3) * se)


def test_item_variance_when_every_seed_agrees() -> None:
    """The arm fixes the same 30 of 100 items with every seed: no training variance, all uncertainty is which
    items the test set happened to contain (the variance of a 0/1 item effect over 100 items)."""
    baseline = np.zeros((4, 100))
    arm = baseline.copy()
    arm[:, :30] = 1
    estimate = contrast([np.stack([baseline, arm])], ARM_MINUS_BASELINE, parallel=False)
    assert estimate.train_variance == 0
    effects = np.r_[np.ones(30), np.zeros(70)]
    assert estimate.item_variance == pytest.approx(effects.var(ddof=1) / 100)
    assert estimate.p_value == pytest.approx(2 * stats.t.sf(0.3 / estimate.se, 3))  # t = 6.5 on 3 df: p = 0.007


def test_graded_item_values_are_used_as_they_are() -> None:
    """Per-item values in [0, 1] that are not 0/1 (a span QA F1): the arm raises each item by its own amount,
    alike with every seed. The item variance is that of the graded effects over the items, far below the 0/1
    (binomial) variance an effect of 0.3 would have: nothing assumes 0/1 values."""
    rng = np.random.default_rng(4)
    baseline = np.tile(rng.uniform(0, 0.5, 200), (4, 1))
    effects = rng.uniform(0.25, 0.35, 200)
    estimate = contrast([np.stack([baseline, baseline + effects])], ARM_MINUS_BASELINE, parallel=False)
    assert estimate.value == pytest.approx(effects.mean())
    assert estimate.train_variance == pytest.approx(0)
    assert estimate.item_variance == pytest.approx(effects.var(ddof=1) / 200)
    assert estimate.item_variance < 0.01 * 0.3 * 0.7 / 200


def test_seed_noise_is_not_counted_as_item_variance() -> None:
    """Each seed fixes its own random 30% of items: the item effects are pure seed noise, so the item part
    (after the moment correction) is about zero while the seed part carries the variance."""
    rng = np.random.default_rng(0)
    baseline = np.zeros((20, 2000))
    arm = (rng.random(baseline.shape) < 0.3).astype(float)
    estimate = contrast([np.stack([baseline, arm])], ARM_MINUS_BASELINE, parallel=False)
    naive = arm.mean(axis=0).var(ddof=1) / 2000  # the variance of seed-averaged item effects, uncorrected
    assert estimate.item_variance < 0.05 * naive


def test_parallel_items_count_once_across_languages() -> None:
    """The same item effects in three languages: as parallel items the language average has the item variance
    of one language; as independent languages it would shrink threefold."""
    baseline = np.zeros((3, 50))
    arm = baseline.copy()
    arm[:, :20] = 1
    correct = [np.stack([baseline, arm])] * 3
    weights = np.array([[-1 / 3] * 3, [1 / 3] * 3])
    joint = contrast(correct, weights, parallel=True)
    independent = contrast(correct, weights, parallel=False)
    single = contrast(correct[:1], ARM_MINUS_BASELINE, parallel=False)
    assert joint.value == independent.value == single.value == pytest.approx(0.4)
    assert joint.item_variance == pytest.approx(single.item_variance)
    assert independent.item_variance == pytest.approx(single.item_variance / 3)


def test_one_seed_cannot_be_tested() -> None:
    correct = np.random.default_rng(1).integers(0, 2, (2, 1, 100)).astype(float)
    estimate = contrast([correct], ARM_MINUS_BASELINE, parallel=False)
    assert not estimate.resolvable and not estimate.significant()
    assert math.isnan(estimate.p_value) and math.isnan(estimate.ci_low) and math.isnan(estimate.mde())


def test_identical_runs_give_no_effect() -> None:
    correct = np.random.default_rng(5).integers(0, 2, (3, 100)).astype(float)
    estimate = contrast([np.stack([correct, correct])], ARM_MINUS_BASELINE, parallel=False)
    assert (estimate.value, estimate.ci_low, estimate.ci_high, estimate.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_minimum_detectable_effect_is_detected_with_the_stated_power() -> None:
    """A true effect equal to the MDE is rejected in 80% of t-distributed estimates (noncentral t)."""
    se, df = 0.004, 9
    mde = minimum_detectable_effect(se, df)
    critical = stats.t.ppf(1 - ALPHA / 2, df)
    power = stats.nct.sf(critical, df, mde / se)
    assert power == pytest.approx(0.80, abs=0.02)
    assert minimum_detectable_effect(se, 1e9) == pytest.approx((1.959964 + 0.841621) * se, rel=1e-4)


def test_seeds_needed_is_the_first_design_with_enough_power() -> None:
    baseline = np.zeros((4, 1000))
    rng = np.random.default_rng(2)
    arm = (rng.random((4, 1000)) < 0.5 + rng.normal(0, 0.02, (4, 1))).astype(float)
    estimate = contrast([np.stack([baseline, arm])], ARM_MINUS_BASELINE, parallel=False)
    needed = seeds_needed(estimate, 0.01)
    assert needed is not None and needed > 4

    def mde(seeds: int) -> float:
        return minimum_detectable_effect(math.sqrt(estimate.train_variance / seeds + estimate.item_variance),
                                         seeds - 1)
    assert mde(needed) <= 0.01 < mde(needed - 1)
    assert seeds_needed(estimate, 0.02) < needed  # a larger effect needs fewer seeds
    # an effect below what the test items allow is not reachable by seeds
    assert seeds_needed(estimate, 0.5 * math.sqrt(estimate.item_variance), item_scale=1.0) is None


def test_holm_matches_a_hand_computed_example() -> None:
    # sorted p: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert (holm(p) < ALPHA).tolist() == [True, False, False, True]
    np.testing.assert_allclose(holm(np.array([0.5, 0.6])), [1.0, 1.0])
    assert holm(np.array([])).size == 0
    # untestable cells (NaN) stay NaN and do not count in the family
    np.testing.assert_allclose(holm(np.array([0.01, np.nan, 0.04])), [0.02, np.nan, 0.04])


def test_holm_agrees_with_statsmodels() -> None:
    p = np.random.default_rng(3).random(25) ** 3
    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1])


def test_linearized_ratio_has_the_corpus_f1_as_mean_and_the_bootstrap_spread() -> None:
    """Corpus-level span F1 (2 x found / (gold + predicted), summed over sentences) is a ratio, not a mean of
    per-sentence F1s; its linearized item values average to it exactly, and their standard error matches the
    bootstrap standard error of the corpus F1 over resampled sentences (planted: 2,000 sentences)."""
    rng = np.random.default_rng(3)
    gold = rng.poisson(1.5, 2000)
    predicted = np.maximum(gold + rng.integers(-1, 2, 2000), 0)
    found = np.minimum(gold, predicted) - rng.binomial(np.minimum(gold, predicted), 0.2)
    values = linearized_ratio(2 * found, gold + predicted)
    corpus = 2 * found.sum() / (gold + predicted).sum()
    assert values.mean() == pytest.approx(corpus, abs=1e-12)
    assert abs(np.mean(2 * found / np.maximum(gold + predicted, 1)) - corpus) > 1e-3  # the mean of items is not it
    draws = rng.integers(0, 2000, (2000, 2000))
    bootstrap = 2 * found[draws].sum(1) / (gold + predicted)[draws].sum(1)
    assert values.std(ddof=1) / math.sqrt(2000) == pytest.approx(bootstrap.std(ddof=1), rel=0.1)
    assert (linearized_ratio(np.zeros(5), np.zeros(5)) == 0).all()  # nothing to find and nothing claimed: 0
