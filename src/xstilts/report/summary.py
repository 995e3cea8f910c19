"""report.json: the primary contrast, the A/A check and every arm's change, for machines (fractions of each
evaluation's metric, not points)."""

from __future__ import annotations

import math

from xstilts.report.analysis import AVERAGE, Analysis
from xstilts.report.findings import PLANNED_EFFECTS
from xstilts.report.results import BASELINE_GROUP
from xstilts.report.statistics import ALPHA, CONFIDENCE, POWER, Estimate, seeds_needed


def _number(value: object) -> object:
    """NaN and infinity as null (JSON has neither); numpy scalars as Python numbers."""
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    value = float(value)
    return None if not math.isfinite(value) else value


def _estimate(estimate: Estimate) -> dict:
    return {key: _number(value) for key, value in estimate.as_dict().items()} | {
        "significant": estimate.significant()}


def report_json(analysis: Analysis) -> dict:
    """The report's numbers as one JSON object."""
    primary = analysis.primary
    cells = analysis.cells
    averages = cells[(cells["language"] == AVERAGE) & (cells["group"] != BASELINE_GROUP)]
    return {
        "units": "fractions of each evaluation's metric (0.01 = 1 point)",
        "alpha": ALPHA, "confidence": CONFIDENCE, "power": POWER,
        "seeds": analysis.results.seeds,
        "primary": None if primary is None else {
            "contrast": "mean change of the English arms minus mean change of the low-resource arms, language average",
            "evaluation": "/".join(primary.eval_set), "metric": analysis.results.metric(primary.eval_set),
            "declared": primary.declared,
            "english_arms": list(primary.english), "low_resource_arms": list(primary.low_resource),
            **_estimate(primary.estimate),
            "seeds_needed": {str(effect): seeds_needed(primary.estimate, effect) for effect in PLANNED_EFFECTS},
        },
        "aa_check": None if analysis.aa is None else {
            "evaluation": "/".join(analysis.aa_eval_set), "metric": analysis.results.metric(analysis.aa_eval_set),
            **_estimate(analysis.aa)},
        "arms": [{"arm": row["arm"], "group": row["group"], "evaluation": f"{row['task']}/{row['split']}",
                  "seeds": int(row["seeds"]), "metric": row["metric"], "score": _number(row["score"]),
                  "change": _number(row["delta"]), "ci_low": _number(row["ci_low"]),
                  "ci_high": _number(row["ci_high"]), "p": _number(row["p"]), "p_holm": _number(row["p_holm"]),
                  "significant": bool(row["significant"]), "mde_80": _number(row["mde"])}
                 for _, row in averages.iterrows()],
        "secondary_family_size": analysis.n_tests,
    }
