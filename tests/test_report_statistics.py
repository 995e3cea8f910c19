"""The report's statistics on constructed data with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from xstilts.report.statistics import ALPHA, Estimate, estimate, holm, paired_differences, resample_means


def paired_bootstrap(arm: np.ndarray, baseline: np.ndarray, n_resamples: int, seed: int = 0) -> Estimate:
    """The report's per-cell test: seed-pooled per-example differences, resampled over examples."""
    differences = paired_differences(arm, baseline)
    replicates = resample_means(differences[None, :], n_resamples, np.random.default_rng(seed))[:, 0]
    return estimate(differences.mean(), replicates)


def test_planted_effect_is_significant_and_covered() -> None:
    """Per seed, the arm fixes 120 of the baseline's errors and breaks 40 of its successes: +8% of 1000 examples."""
    rng = np.random.default_rng(1)
    seeds, examples, effect = 3, 1000, 0.08
    baseline = (rng.random((seeds, examples)) < 0.60).astype(int)
    arm = baseline.copy()
    for seed in range(seeds):
        arm[seed, rng.choice(np.flatnonzero(baseline[seed] == 0), 120, replace=False)] = 1
        arm[seed, rng.choice(np.flatnonzero(baseline[seed] == 1), 40, replace=False)] = 0
    result = paired_bootstrap(arm, baseline, n_resamples=1000)
    assert result.value == pytest.approx(effect)
    assert result.p_value < 0.001
    assert 0 < result.ci_low < effect < result.ci_high


def test_no_effect_is_rejected_at_about_the_nominal_rate() -> None:
    rng = np.random.default_rng(2)
    draws, examples = 200, 500
    rejections = 0
    for draw in range(draws):
        baseline, arm = (rng.random((2, 1, examples)) < 0.6).astype(int)
        rejections += paired_bootstrap(arm, baseline, n_resamples=500, seed=draw).p_value < ALPHA
    assert 0.01 <= rejections / draws <= 0.10


def test_paired_resampling_removes_what_arm_and_baseline_share() -> None:
    """A difference on one example class only: pairing makes the interval much narrower than unpaired noise."""
    rng = np.random.default_rng(3)
    baseline = (rng.random((1, 800)) < 0.5).astype(int)
    arm = baseline.copy()
    arm[0, np.flatnonzero(baseline[0] == 0)[:40]] = 1  # exactly 40 more correct: +5 points
    result = paired_bootstrap(arm, baseline, n_resamples=1000)
    assert result.value == pytest.approx(40 / 800)
    assert result.ci_high - result.ci_low < 0.04  # unpaired, the 95% interval would be about 0.10 wide
    assert result.p_value < 1e-6


def test_rows_share_resampled_examples() -> None:
    values = np.random.default_rng(4).random((1, 50))
    replicates = resample_means(np.vstack([values, values, np.ones_like(values)]), 200, np.random.default_rng(0))
    assert replicates.shape == (200, 3)
    np.testing.assert_allclose(replicates[:, 0], replicates[:, 1])
    np.testing.assert_allclose(replicates[:, 2], 1.0)


def test_identical_predictions_give_no_effect() -> None:
    correct = np.random.default_rng(5).integers(0, 2, (2, 100))
    result = paired_bootstrap(correct, correct, n_resamples=100)
    assert (result.value, result.ci_low, result.ci_high, result.p_value) == (0.0, 0.0, 0.0, 1.0)


def test_shapes_must_match() -> None:
    with pytest.raises(ValueError, match="shapes differ"):
        paired_differences(np.zeros((2, 10)), np.zeros((3, 10)))


def test_holm_matches_a_hand_computed_example() -> None:
    # sorted p: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> running max 0.06
    p = np.array([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(holm(p), [0.03, 0.06, 0.06, 0.02])
    assert (holm(p) < ALPHA).tolist() == [True, False, False, True]
    np.testing.assert_allclose(holm(np.array([0.5, 0.6])), [1.0, 1.0])
    assert holm(np.array([])).size == 0
