"""The study's comparisons, all as run-level contrasts (see statistics.py): every arm against the baseline on
every test set and on each evaluation set's language average (the secondary family, Holm-corrected), the
groups of arms against each other, the pre-declared primary contrast (a family of its own), and an A/A check
that splits the baseline's runs by seed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from xstilts.errors import XstiltsError
from xstilts.report.results import BASELINE_GROUP, GROUPS, EvalSet, Results
from xstilts.report.statistics import ALPHA, Estimate, contrast, holm

AVERAGE = "avg"
ENGLISH, LOW_RESOURCE, CONTROL = "english", "low-resource", "control"
DIFFERENCE = "english − low-resource"
ARM_GROUPS = GROUPS[1:]
SUBSETS = ("in-language", "other languages", "size-matched", "natural-size")
AA_ARMS = ("baseline seeds A", "baseline seeds B")

Weights = dict[tuple[str, str], float]  # (arm, language) -> weight of that score in a contrast


@dataclass(frozen=True)
class Primary:
    """The study's pre-declared question: English minus low-resource arms on one evaluation's language average."""

    eval_set: EvalSet
    english: tuple[str, ...]
    low_resource: tuple[str, ...]
    estimate: Estimate
    declared: bool  # named in the study spec (else the default)


@dataclass(frozen=True)
class Analysis:
    """Per-cell results (`cells`), group comparisons (`groups`), the primary contrast and the A/A check.

    cells: arm, group, task, split, language (AVERAGE for the mean over languages), n, seeds, metric (the
    evaluation set's), score and score_std (over seeds), delta (change against the baseline) and delta_std
    (std of the seed-paired changes), ci_low, ci_high, p, p_holm, significant, mde (80% power), in_language,
    size_matched.
    groups: task, split, kind ('language' or 'subset'), scope (a language, AVERAGE or one of SUBSETS),
    group (an arm group or DIFFERENCE), value, ci_low, ci_high, p_value, mde, cells (arm x language cells).
    All in fractions, not points.
    """

    results: Results
    cells: pd.DataFrame
    groups: pd.DataFrame
    primary: Primary | None
    aa: Estimate | None  # baseline seeds split in two halves; None with fewer than 4 baseline seeds
    aa_eval_set: EvalSet  # where the A/A check is made: the primary contrast's evaluation set, else the first

    @property
    def n_tests(self) -> int:
        """Size of the secondary Holm family: every arm x test-set cell and every arm's average."""
        return int(self.cells["p"].notna().sum())

    @property
    def resolvable(self) -> bool:
        """Whether the design can test anything (enough seeds)."""
        return self.n_tests > 0

    def cells_of(self, eval_set: EvalSet) -> pd.DataFrame:
        """The cells of one evaluation set."""
        return self.cells[(self.cells["task"] == eval_set[0]) & (self.cells["split"] == eval_set[1])]

    def groups_of(self, eval_set: EvalSet, kind: str) -> pd.DataFrame:
        """Group comparisons of one evaluation set, per language (`kind='language'`) or per subset."""
        groups = self.groups
        return groups[(groups["task"] == eval_set[0]) & (groups["split"] == eval_set[1]) & (groups["kind"] == kind)]


@dataclass(frozen=True)
class EvalSetRuns:
    """The per-item scores of every run on one evaluation set, and contrasts estimated from them."""

    results: Results
    eval_set: EvalSet
    languages: list[str]
    parallel: bool
    runs: dict[tuple[str, str], dict[int, np.ndarray]]  # (arm, language) -> seed -> per-item scores

    @classmethod
    def load(cls, results: Results, eval_set: EvalSet) -> EvalSetRuns:
        languages = results.languages(eval_set)
        found = results.item_scores(eval_set)
        runs = {(arm, language): found.get((arm, language), {}) for arm in results.arms.index for language in languages}
        return cls(results, eval_set, languages, results.parallel(eval_set), runs)

    def seeds(self, arms: list[str]) -> list[int]:
        """Seeds that every one of `arms` has on every language."""
        sets = [set(self.runs[(arm, language)]) for arm in arms for language in self.languages]
        return sorted(set.intersection(*sets)) if sets else []

    def has(self, arm: str) -> bool:
        return any(self.runs[(arm, language)] for language in self.languages)

    def estimate(self, weights: Weights, seed_map: dict[str, list[int]] | None = None) -> Estimate:
        """The contrast `weights`, over the seeds all its arms share (or the seeds `seed_map` gives each arm,
        aligned by position: the i-th seed of every arm forms block i)."""
        arms = list(dict.fromkeys(arm for arm, _ in weights))
        if seed_map is None:
            seeds = self.seeds(arms)
            if not seeds:
                raise XstiltsError(f"{self.results.path}: arms {', '.join(arms)} share no seed on "
                                   f"{'/'.join(self.eval_set)}")
            seed_map = {arm: seeds for arm in arms}
        matrix = np.array([[weights.get((arm, language), 0.0) for language in self.languages] for arm in arms])
        scores = [np.stack([np.stack([self.runs[(arm, language)][seed] for seed in seed_map[arm]]) for arm in arms])
                  for language in self.languages]
        return contrast(scores, matrix, self.parallel)


def _versus_baseline(runs: EvalSetRuns, cells: dict[str, list[str]]) -> Weights:
    """Mean over the given (arm -> languages) cells of the arm's score minus the baseline's."""
    count = sum(len(languages) for languages in cells.values())
    baseline = runs.results.baseline
    weights: Weights = {}
    for arm, languages in cells.items():
        for language in languages:
            weights[(arm, language)] = weights.get((arm, language), 0.0) + 1 / count
            key = (baseline, language)
            weights[key] = weights.get(key, 0.0) - 1 / count
    return weights


def _difference(first: Weights, second: Weights) -> Weights:
    keys = dict.fromkeys([*first, *second])
    return {key: first.get(key, 0.0) - second.get(key, 0.0) for key in keys}


def _seed_std(runs: EvalSetRuns, arm: str, languages: list[str]) -> tuple[float, float, int]:
    """Mean and std over seeds of an arm's score averaged over `languages`, and the number of seeds."""
    seeds = runs.seeds([arm])
    values = np.array([np.mean([runs.runs[(arm, language)][seed].mean() for language in languages])
                       for seed in seeds])
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else float("nan"), len(values)


def _cell_rows(runs: EvalSetRuns) -> list[dict]:
    """Every arm on every language of one evaluation set and on its average."""
    results, eval_set = runs.results, runs.eval_set
    baseline = results.baseline
    if not runs.has(baseline):
        raise XstiltsError(f"{results.path}: the baseline arm {baseline!r} has no rows for {'/'.join(eval_set)}")
    metric = results.metric(eval_set)
    rows = []
    for arm, info in results.arms.iterrows():
        if not runs.has(arm):
            continue
        for language in [*runs.languages, AVERAGE]:
            languages = runs.languages if language == AVERAGE else [language]
            score, score_std, seeds = _seed_std(runs, arm, languages)
            n = sum(len(next(iter(runs.runs[(arm, lang)].values()))) for lang in languages)
            row = {"arm": arm, "group": info["group"], "task": eval_set[0], "split": eval_set[1],
                   "language": language, "n": n, "seeds": seeds, "metric": metric, "score": score,
                   "score_std": score_std, "in_language": language in info["languages"],
                   "size_matched": bool(info["size_matched"])}
            if arm == baseline:
                row |= dict.fromkeys(("delta", "delta_std", "ci_low", "ci_high", "p", "mde"), np.nan)
            else:
                estimate = runs.estimate(_versus_baseline(runs, {arm: languages}))
                row |= {"delta": estimate.value, "delta_std": float(np.sqrt(estimate.train_variance)),
                        "ci_low": estimate.ci_low, "ci_high": estimate.ci_high, "p": estimate.p_value,
                        "mde": estimate.mde()}
            rows.append(row)
    return rows


def _group_rows(runs: EvalSetRuns, cells: pd.DataFrame) -> list[dict]:
    """Mean change of each arm group, and English minus low-resource, per language, overall and per subset."""
    arm_cells = cells[(cells["group"] != BASELINE_GROUP) & (cells["language"] != AVERAGE)]
    scopes = [("language", language, arm_cells["language"] == language) for language in runs.languages]
    scopes.append(("language", AVERAGE, pd.Series(True, index=arm_cells.index)))
    in_language, size_matched = arm_cells["in_language"].astype(bool), arm_cells["size_matched"].astype(bool)
    scopes += [("subset", name, mask) for name, mask in
               zip(SUBSETS, (in_language, ~in_language, size_matched, ~size_matched))]
    rows = []
    for kind, scope, mask in scopes:
        effects: dict[str, tuple[Weights, int]] = {}
        for group in ARM_GROUPS:
            selected = arm_cells[mask & (arm_cells["group"] == group)]
            if not selected.empty:
                chosen = selected.groupby("arm", sort=False)["language"].apply(list).to_dict()
                effects[group] = (_versus_baseline(runs, chosen), len(selected))
        if ENGLISH in effects and LOW_RESOURCE in effects:
            effects[DIFFERENCE] = (_difference(effects[ENGLISH][0], effects[LOW_RESOURCE][0]),
                                   effects[ENGLISH][1] + effects[LOW_RESOURCE][1])
        for group, (weights, count) in effects.items():
            estimate = runs.estimate(weights)
            rows.append({"task": runs.eval_set[0], "split": runs.eval_set[1], "kind": kind, "scope": scope,
                         "group": group, "value": estimate.value, "ci_low": estimate.ci_low,
                         "ci_high": estimate.ci_high, "p_value": estimate.p_value, "mde": estimate.mde(),
                         "cells": count})
    return rows


def primary_estimate(runs: EvalSetRuns, english: list[str], low_resource: list[str]) -> Estimate:
    """Mean change of the English arms minus that of the low-resource arms on the language average."""
    def group(arms: list[str]) -> Weights:
        return _versus_baseline(runs, {arm: runs.languages for arm in arms})
    return runs.estimate(_difference(group(english), group(low_resource)))


def _primary(results: Results, study: dict, by_set: dict[EvalSet, EvalSetRuns]) -> Primary | None:
    """The primary contrast as the study spec declares it (default: the first evaluation, every English and
    low-resource arm); None when a group has no arm."""
    declared = study.get("primary") if isinstance(study.get("primary"), dict) else {}
    evaluation = declared.get("evaluation")
    eval_set = tuple(evaluation.split("/", 1)) if isinstance(evaluation, str) and "/" in evaluation else None
    if eval_set is None or eval_set not in by_set:
        eval_set = results.eval_sets[0]
    runs = by_set[eval_set]
    listed = declared.get("arms")
    arms = [arm for arm in results.arms.index if runs.has(arm) and (not listed or arm in listed)]
    groups = results.arms["group"]
    english = [arm for arm in arms if groups[arm] == ENGLISH]
    low_resource = [arm for arm in arms if groups[arm] == LOW_RESOURCE]
    if not english or not low_resource:
        return None
    return Primary(eval_set, tuple(english), tuple(low_resource), primary_estimate(runs, english, low_resource),
                   declared=bool(declared))


def aa_check(runs: EvalSetRuns) -> Estimate | None:
    """The baseline's runs split by seed into two pseudo-arms (first half of its seeds against the second),
    paired in seed order, compared on the language average: they differ only by training randomness."""
    baseline = runs.results.baseline
    seeds = runs.seeds([baseline])
    half = len(seeds) // 2
    if half < 2:
        return None
    weights = {(arm, language): sign / len(runs.languages)
               for arm, sign in zip(AA_ARMS, (1.0, -1.0)) for language in runs.languages}
    pseudo = replace(runs, runs={(arm, language): runs.runs[(baseline, language)]
                                 for arm in AA_ARMS for language in runs.languages})
    return pseudo.estimate(weights, {AA_ARMS[0]: seeds[:half], AA_ARMS[1]: seeds[half:2 * half]})


def analyse(results: Results, study: dict | None = None) -> Analysis:
    """Run every comparison of the report; `study` is the study spec (study.json) naming the primary contrast."""
    by_set = {eval_set: EvalSetRuns.load(results, eval_set) for eval_set in results.eval_sets}
    cells = pd.DataFrame([row for runs in by_set.values() for row in _cell_rows(runs)])
    cells["p_holm"] = holm(cells["p"].to_numpy())
    cells["significant"] = cells["p_holm"] < ALPHA
    groups = pd.DataFrame([row for eval_set, runs in by_set.items()
                           for row in _group_rows(runs, cells[(cells["task"] == eval_set[0])
                                                              & (cells["split"] == eval_set[1])])])
    primary = _primary(results, study or {}, by_set)
    aa_eval_set = primary.eval_set if primary else results.eval_sets[0]
    return Analysis(results, cells, groups, primary, aa_check(by_set[aa_eval_set]), aa_eval_set)
