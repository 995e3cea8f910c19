"""Numbers as report text: scores and changes in percentage points, intervals and p-values; metric names."""

from __future__ import annotations

import math
from collections.abc import Iterable

from xstilts.report.statistics import CONFIDENCE

MINUS = "−"
GROUP_NAMES = {"english": "English", "low-resource": "low-resource", "mixed": "mixed", "mlm": "masked-LM", "control": "positive control"}
METRIC_NAMES = {"f1": "F1"}  # as prose names them; others with spaces for underscores


def metric_name(metric: str) -> str:
    """A metric as the report names it ('accuracy', 'f1' -> 'F1', 'exact_match' -> 'exact match')."""
    return METRIC_NAMES.get(metric, metric.replace("_", " "))


def points(fraction: float, signed: bool = True) -> str:
    """A fraction as percentage points with one decimal (signed: with '+' or '−'; never '−0.0')."""
    rounded = round(100 * fraction, 1) + 0.0
    return f"{rounded:{'+' if signed else ''}.1f}".replace("-", MINUS)


def with_std(fraction: float, std: float, signed: bool = False) -> str:
    """`points±std`, compact for table cells (the std omitted when undefined, e.g. for one seed)."""
    return points(fraction, signed) + ("" if math.isnan(std) else f"±{points(std, signed=False)}")


P_FLOOR = 0.001  # smaller p-values print as '< 0.001': a t test on a few seeds resolves no finer in practice


def interval(low: float, high: float) -> str:
    """A confidence interval in points, e.g. '95% CI +0.4 to +2.1' (or 'no interval' when untestable)."""
    if math.isnan(low):
        return "no interval: one seed"
    return f"{CONFIDENCE:.0%} CI {points(low)} to {points(high)}"


def bracketed(value: float, low: float, high: float) -> str:
    """A change with its interval for table cells, e.g. '+1.2 [+0.4, +2.1]'."""
    return points(value) + ("" if math.isnan(low) else f" [{points(low)}, {points(high)}]")


def p_value(p: float) -> str:
    """'p < 0.001', 'p = 0.012', or 'not testable' (NaN)."""
    if math.isnan(p):
        return "not testable"
    return f"p < {P_FLOOR}" if p < P_FLOOR else f"p = {p:.3f}"


def p_cell(p: float) -> str:
    """A p-value for table cells: '<0.001', '0.0123' or '–'."""
    if math.isnan(p):
        return "–"
    return f"<{P_FLOOR}" if p < P_FLOOR else f"{p:.3g}"


def span(counts: Iterable[int]) -> str:
    """'100' when all counts are equal, else 'min–max'."""
    values = sorted(set(counts))
    return str(values[0]) if len(values) == 1 else f"{values[0]}–{values[-1]}"


def plural(count: int, word: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{count} {word}{'' if count == 1 else 'es' if word.endswith('s') else 's'}"


def capitalised(words: str) -> str:
    """The first letter upper-cased, the rest kept ('low-resource' -> 'Low-resource', 'xnli' -> 'Xnli')."""
    return words[:1].upper() + words[1:]
