"""The study's comparisons: every arm against the baseline on every test set, and groups of arms against each other.

Each arm x test-set cell keeps its bootstrap replicates. All arms on one test set share the resampled example
indices, so averages over cells (an arm's average over languages, a group's mean, the difference of two
groups) get their intervals by averaging the replicates; test sets of different languages are resampled
independently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from xstilts.errors import XstiltsError
from xstilts.report.results import BASELINE_GROUP, GROUPS, EvalSet, Results
from xstilts.report.statistics import ALPHA, estimate, holm, paired_differences, resample_means

AVERAGE = "avg"
ENGLISH, LOW_RESOURCE = "english", "low-resource"
DIFFERENCE = "english − low-resource"
ARM_GROUPS = GROUPS[1:]
SUBSETS = ("in-language", "other languages", "size-matched", "natural-size")


@dataclass(frozen=True)
class Analysis:
    """Per-cell results (`cells`) and group comparisons (`groups`).

    cells: arm, group, task, split, language (AVERAGE for the mean over languages), n, seeds, accuracy and
    accuracy_std (over seeds), delta (change against the baseline) and delta_std (over seed-paired changes),
    ci_low, ci_high, p, p_holm, significant, in_language, size_matched; fractions, not points.
    groups: task, split, kind ('language' or 'subset'), scope (a language, AVERAGE or one of SUBSETS),
    group (an arm group or DIFFERENCE), value, ci_low, ci_high, p_value, cells (arm x language cells pooled).
    """

    results: Results
    cells: pd.DataFrame
    groups: pd.DataFrame
    n_resamples: int
    seed: int

    @property
    def n_tests(self) -> int:
        """Size of the Holm family: every arm x test-set cell and every arm's average."""
        return int((self.cells["group"] != BASELINE_GROUP).sum())

    def cells_of(self, eval_set: EvalSet) -> pd.DataFrame:
        """The cells of one evaluation set."""
        return self.cells[(self.cells["task"] == eval_set[0]) & (self.cells["split"] == eval_set[1])]

    def groups_of(self, eval_set: EvalSet, kind: str) -> pd.DataFrame:
        """Group comparisons of one evaluation set, per language (`kind='language'`) or per subset."""
        groups = self.groups
        return groups[(groups["task"] == eval_set[0]) & (groups["split"] == eval_set[1]) & (groups["kind"] == kind)]


def _mean_std(values: dict[int, float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds (NaN for a single seed)."""
    array = np.array(list(values.values()))
    std = float(array.std(ddof=1)) if len(array) > 1 else float("nan")
    return float(array.mean()), std


def _test_set_cells(results: Results, eval_set: EvalSet, language: str, n_resamples: int,
                    rng: np.random.Generator) -> list[dict]:
    """One record per arm on one test set: per-seed accuracies and changes, and the bootstrap replicates."""
    baseline = results.correctness(results.baseline, eval_set, language)
    where = f"{'/'.join(eval_set)}/{language}"
    if not baseline:
        raise XstiltsError(f"{results.path}: the baseline arm {results.baseline!r} has no rows for {where}")
    records, differences = [], []
    for arm, info in results.arms.iterrows():
        runs = results.correctness(arm, eval_set, language)
        seeds = sorted(set(runs) & set(baseline))
        if runs and not seeds:
            raise XstiltsError(f"{results.path}: arm {arm!r} shares no seed with the baseline on {where}")
        if not seeds:
            continue
        accuracy = {seed: float(runs[seed].mean()) for seed in seeds}
        records.append({"arm": arm, "group": info["group"], "language": language, "n": len(runs[seeds[0]]),
                        "in_language": language in info["languages"], "size_matched": bool(info["size_matched"]),
                        "seed_accuracy": accuracy,
                        "seed_delta": {seed: accuracy[seed] - float(baseline[seed].mean()) for seed in seeds}})
        if arm != results.baseline:
            differences.append(paired_differences(np.stack([runs[seed] for seed in seeds]),
                                                  np.stack([baseline[seed] for seed in seeds])))
    replicates = resample_means(np.stack(differences), n_resamples, rng) if differences else np.empty((n_resamples, 0))
    arm_records = (record for record in records if record["arm"] != results.baseline)
    for record, difference, column in zip(arm_records, differences, replicates.T):
        record["value"], record["replicates"] = float(difference.mean()), column
    return records


def _average(records: list[dict]) -> dict:
    """One arm's mean over the languages of an evaluation set (per seed present in every language)."""
    seeds = set.intersection(*(set(record["seed_accuracy"]) for record in records))
    first = records[0]
    average = {"arm": first["arm"], "group": first["group"], "language": AVERAGE, "in_language": False,
               "size_matched": first["size_matched"], "n": sum(record["n"] for record in records),
               **{key: {seed: float(np.mean([r[key][seed] for r in records])) for seed in sorted(seeds)}
                  for key in ("seed_accuracy", "seed_delta")}}
    if "value" in first:
        average["value"] = float(np.mean([record["value"] for record in records]))
        average["replicates"] = np.mean([record["replicates"] for record in records], axis=0)
    return average


def _cells(results: Results, n_resamples: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Every arm on every test set and on each evaluation set's average, with Holm-adjusted p-values."""
    rng = np.random.default_rng(seed)
    records = []
    for eval_set in results.eval_sets:
        per_language = [_test_set_cells(results, eval_set, language, n_resamples, rng)
                        for language in results.languages(eval_set)]
        by_arm: dict[str, list[dict]] = {}
        for record in (record for language in per_language for record in language):
            by_arm.setdefault(record["arm"], []).append(record)
        for arm_records in by_arm.values():
            records += [{"task": eval_set[0], "split": eval_set[1], **record}
                        for record in (*arm_records, _average(arm_records))]
    rows, replicates = [], []
    for record in records:
        seed_accuracy, seed_delta = record.pop("seed_accuracy"), record.pop("seed_delta")
        value, reps = record.pop("value", None), record.pop("replicates", np.full(n_resamples, np.nan))
        accuracy, accuracy_std = _mean_std(seed_accuracy)
        row = {**record, "seeds": len(seed_accuracy), "accuracy": accuracy, "accuracy_std": accuracy_std}
        if value is None:
            row |= dict.fromkeys(("delta", "delta_std", "ci_low", "ci_high", "p"), np.nan)
        else:
            result = estimate(value, reps)
            row |= {"delta": result.value, "delta_std": _mean_std(seed_delta)[1], "ci_low": result.ci_low,
                    "ci_high": result.ci_high, "p": result.p_value}
        rows.append(row)
        replicates.append(reps)
    cells = pd.DataFrame(rows)
    tested = (cells["group"] != BASELINE_GROUP).to_numpy()
    cells["p_holm"] = np.nan
    cells.loc[tested, "p_holm"] = holm(cells.loc[tested, "p"].to_numpy())
    cells["significant"] = cells["p_holm"] < ALPHA
    return cells, np.array(replicates)


def _group_rows(cells: pd.DataFrame, replicates: np.ndarray, eval_set: EvalSet, languages: list[str]) -> list[dict]:
    """Mean change of each arm group, and English minus low-resource, per language, overall and per subset."""
    arm_cells = ((cells["task"] == eval_set[0]) & (cells["split"] == eval_set[1]) & (cells["group"] != BASELINE_GROUP)
                 & (cells["language"] != AVERAGE))
    scopes = [("language", language, arm_cells & (cells["language"] == language)) for language in languages]
    scopes.append(("language", AVERAGE, arm_cells))
    in_language, size_matched = cells["in_language"].astype(bool), cells["size_matched"].astype(bool)
    masks = (in_language, ~in_language, size_matched, ~size_matched)
    scopes += [("subset", name, arm_cells & mask) for name, mask in zip(SUBSETS, masks)]
    rows = []
    for kind, scope, mask in scopes:
        effects = {}
        for group in ARM_GROUPS:
            selected = (mask & (cells["group"] == group)).to_numpy()
            if selected.any():
                effects[group] = (cells.loc[selected, "delta"].mean(), replicates[selected].mean(axis=0),
                                  int(selected.sum()))
        if ENGLISH in effects and LOW_RESOURCE in effects:
            (english, english_reps, english_cells), (low, low_reps, low_cells) = effects[ENGLISH], effects[LOW_RESOURCE]
            effects[DIFFERENCE] = (english - low, english_reps - low_reps, english_cells + low_cells)
        rows += [{"task": eval_set[0], "split": eval_set[1], "kind": kind, "scope": scope, "group": group,
                  **asdict(estimate(value, reps)), "cells": count} for group, (value, reps, count) in effects.items()]
    return rows


def analyse(results: Results, n_resamples: int = 1000, seed: int = 0) -> Analysis:
    """Run every comparison of the report with `n_resamples` bootstrap replicates from a generator seeded `seed`."""
    cells, replicates = _cells(results, n_resamples, seed)
    rows = [row for eval_set in results.eval_sets
            for row in _group_rows(cells, replicates, eval_set, results.languages(eval_set))]
    return Analysis(results, cells, pd.DataFrame(rows), n_resamples, seed)
