"""The report's inference against planted truth: simulated studies with seed effects and parallel items.

An A/A design (no arm has an effect) must be called significant at most at the nominal rate; a planted effect
must be found, with intervals that cover it about as often as they claim. 200 simulated studies per check.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from simulated_study import Design, simulate
from xstilts.report.analysis import EvalSetRuns, aa_check, analyse, primary_estimate
from xstilts.report.statistics import ALPHA

STUDIES = 200
EVAL_SET = ("xnli", "test")
ENGLISH, LOW_RESOURCE = ["snli", "qqp"], ["indonli", "klue-nli"]


def _primary(design: Design, seed: int) -> list:
    rng = np.random.default_rng(seed)
    return [primary_estimate(EvalSetRuns.load(simulate(design, rng), EVAL_SET), ENGLISH, LOW_RESOURCE)
            for _ in range(STUDIES)]


@pytest.mark.parametrize("seeds", [4, 10])
def test_aa_primary_contrast_keeps_the_false_positive_rate(seeds: int) -> None:
    estimates = _primary(Design(seeds=seeds), seed=seeds)
    rate = np.mean([estimate.p_value < ALPHA for estimate in estimates])
    assert rate <= 0.07, rate
    coverage = np.mean([estimate.ci_low <= 0 <= estimate.ci_high for estimate in estimates])
    assert coverage >= 0.93, coverage


def test_planted_two_points_with_ten_seeds_is_found_and_covered() -> None:
    arms = (("snli", "english", 0.02), ("qqp", "english", 0.02), ("indonli", "low-resource", 0.0),
            ("klue-nli", "low-resource", 0.0))
    estimates = _primary(Design(arms=arms, seeds=10), seed=11)
    found = np.mean([estimate.p_value < ALPHA and estimate.value > 0 for estimate in estimates])
    coverage = np.mean([estimate.ci_low <= 0.02 <= estimate.ci_high for estimate in estimates])
    assert found >= 0.85, found
    assert 0.90 <= coverage <= 0.99, coverage
    # the design's minimum detectable effect is below the planted 2 points, as the power requires
    assert np.median([estimate.mde() for estimate in estimates]) < 0.02


def test_aa_per_arm_tests_through_the_whole_analysis() -> None:
    """Every arm's average change against the baseline (the report's secondary family), before and after Holm."""
    rng = np.random.default_rng(5)
    raw, corrected = [], []
    for _ in range(STUDIES):
        design = Design(arms=(("snli", "english", 0.0), ("indonli", "low-resource", 0.0)), seeds=4, items=100,
                        languages=("en", "fr", "sw"))
        cells = analyse(simulate(design, rng)).cells
        averages = cells[(cells["language"] == "avg") & (cells["group"] != "baseline")]
        raw += (averages["p"] < ALPHA).tolist()
        corrected.append(bool(cells["significant"].any()))
    assert np.mean(raw) <= 0.07, np.mean(raw)
    assert np.mean(corrected) <= 0.07, np.mean(corrected)  # Holm keeps the family-wise rate


def test_baseline_split_by_seed_is_not_significant_beyond_the_nominal_rate() -> None:
    """The report's A/A check: half of the baseline's seeds against the other half."""
    rng = np.random.default_rng(6)
    design = Design(arms=(), seeds=8)
    estimates = [aa_check(EvalSetRuns.load(simulate(design, rng), EVAL_SET)) for _ in range(STUDIES)]
    assert all(estimate.seeds == 4 for estimate in estimates)
    assert np.mean([estimate.p_value < ALPHA for estimate in estimates]) <= 0.07


def test_ignoring_parallel_items_would_understate_the_uncertainty() -> None:
    """The same simulated XNLI-like studies analysed as if each language had its own items: too many false
    positives. This is why a task declares `parallel: true`."""
    rng = np.random.default_rng(7)
    joint, independent = [], []
    for _ in range(STUDIES):
        runs = EvalSetRuns.load(simulate(Design(seeds=10, item_effect_std=0.1), rng), EVAL_SET)
        joint.append(primary_estimate(runs, ENGLISH, LOW_RESOURCE))
        independent.append(primary_estimate(replace(runs, parallel=False), ENGLISH, LOW_RESOURCE))
    joint_rate = np.mean([estimate.p_value < ALPHA for estimate in joint])
    independent_rate = np.mean([estimate.p_value < ALPHA for estimate in independent])
    assert independent_rate > 0.10 > joint_rate, (independent_rate, joint_rate)
    assert np.median([e.se for e in independent]) < 0.75 * np.median([e.se for e in joint])
