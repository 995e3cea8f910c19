"""The findings and caveats of the report, written from the computed numbers (no result prose is fixed)."""

from __future__ import annotations

import pandas as pd

from xstilts.report.analysis import ARM_GROUPS, AVERAGE, DIFFERENCE, ENGLISH, LOW_RESOURCE, Analysis
from xstilts.report.formatting import GROUP_NAMES, capitalised, interval, p_value, plural, points, span
from xstilts.report.protocol import Protocol
from xstilts.report.results import BASELINE_GROUP, EvalSet
from xstilts.report.statistics import ALPHA

FULL_TEST_SIZES = {"xnli": 5010, "americasnli": 750}  # test examples per language
MIN_SEEDS = 3
LISTED = 3


def _enumerate(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _effect(row: pd.Series) -> str:
    return f"{points(row['value'])} points ({interval(row['ci_low'], row['ci_high'])})"


def _languages(rows: pd.DataFrame, descending: bool) -> str:
    """The languages with the largest values (in the given direction), with their values."""
    top = rows.sort_values("value", ascending=not descending).head(LISTED)
    return _enumerate([f"{row['scope']} ({points(row['value'])})" for _, row in top.iterrows()])


def _answer(analysis: Analysis, eval_set: EvalSet) -> list[str]:
    """Which group helps more, by how much and how certainly, and where."""
    by_language = analysis.groups_of(eval_set, "language")
    overall = by_language[by_language["scope"] == AVERAGE].set_index("group")
    languages = by_language[by_language["scope"] != AVERAGE]
    cells = analysis.cells_of(eval_set)
    arm_counts = cells.drop_duplicates("arm")["group"].value_counts()
    parts = [f"{GROUP_NAMES[group]} intermediate tasks ({plural(int(arm_counts[group]), 'arm')}) "
             f"{'changed average accuracy by ' if not index else 'by '}{_effect(overall.loc[group])}"
             for index, group in enumerate(group for group in ARM_GROUPS if group in overall.index)]
    name = f"{eval_set[0]} {eval_set[1]} ({len(analysis.results.languages(eval_set))} languages)"
    if not parts:
        return [f"On {name} there are no intermediate-task arms to compare with the baseline."]
    sentences = [f"On {name}, relative to the baseline, {_enumerate(parts)}."]
    if DIFFERENCE not in overall.index:
        missing = [GROUP_NAMES[group] for group in (ENGLISH, LOW_RESOURCE) if group not in overall.index]
        return sentences + [f"The study has no {_enumerate(missing)} arms on {eval_set[0]}, so it cannot say whether "
                            "English or low-resource intermediate tasks help more."]
    difference = overall.loc[DIFFERENCE]
    english_ahead = difference["value"] >= 0
    ranked = (ENGLISH, LOW_RESOURCE) if english_ahead else (LOW_RESOURCE, ENGLISH)
    winner, loser = (GROUP_NAMES[group] for group in ranked)
    stated = (f"the English − low-resource difference is {points(difference['value'])} points "
              f"({interval(difference['ci_low'], difference['ci_high'])}, {p_value(difference['p_value'])})")
    if difference["ci_low"] > 0 or difference["ci_high"] < 0:
        sentences.append(f"{capitalised(winner)} intermediate tasks helped more: {stated}.")
    else:
        sentences.append(f"Neither group helped clearly more: {stated}, an interval that includes zero.")
    advantage = languages[languages["group"] == DIFFERENCE]
    advantage = advantage.assign(value=advantage["value"] * (1 if english_ahead else -1))
    ahead, behind = advantage[advantage["value"] > 0], advantage[advantage["value"] < 0]
    where = []
    if not ahead.empty:
        where.append(f"the advantage of the {winner} arms (in points) is largest in {_languages(ahead, True)}")
    if not behind.empty:
        lead = _languages(behind.assign(value=-behind["value"]), True)
        where.append(f"the {loser} arms are ahead in {plural(len(behind), 'language')}"
                     f"{', most in' if len(behind) > LISTED else ':'} {lead}")
    if where:
        sentences.append(capitalised("; ".join(where)) + ".")
    per_group = [f"{GROUP_NAMES[group]} arms do best in {_languages(languages[languages['group'] == group], True)}"
                 for group in (ENGLISH, LOW_RESOURCE)]
    return sentences + ["; ".join(per_group) + "."]


def _significance(analysis: Analysis, eval_set: EvalSet) -> list[str]:
    """How many cells are significant after Holm correction, and the best and worst arms on average."""
    cells = analysis.cells_of(eval_set)
    tested = cells[(cells["group"] != BASELINE_GROUP) & (cells["language"] != AVERAGE)]
    significant = tested[tested["significant"]]
    gains = int((significant["delta"] > 0).sum())
    counted = (f"{len(significant)} of the {len(tested)} arm × language changes on {eval_set[0]} "
               f"{'is' if len(significant) == 1 else 'are'} significant at α = {ALPHA} "
               f"({plural(gains, 'gain')}, {plural(len(significant) - gains, 'loss')})" if len(significant) else
               f"none of the {len(tested)} arm × language changes on {eval_set[0]} is significant at α = {ALPHA}")
    sentences = [f"After Holm correction over all {analysis.n_tests} tests of this report, {counted}."]
    averages = cells[(cells["group"] != BASELINE_GROUP) & (cells["language"] == AVERAGE)].sort_values("delta")
    if len(averages) > 1:
        best, worst = averages.iloc[-1], averages.iloc[0]
        mark = {True: ", significant", False: ", not significant"}
        sentences.append(f"The largest average change is {best['arm']}'s ({points(best['delta'])} points"
                         f"{mark[bool(best['significant'])]}), the smallest {worst['arm']}'s "
                         f"({points(worst['delta'])} points{mark[bool(worst['significant'])]}).")
    return sentences


def _subsets(analysis: Analysis, eval_set: EvalSet) -> list[str]:
    """In-language vs other languages per group; English vs low-resource among size-matched and natural-size arms."""
    subsets = analysis.groups_of(eval_set, "subset").set_index(["scope", "group"])
    sentences, absent = [], []
    for group in (ENGLISH, LOW_RESOURCE, "mixed"):
        if ("in-language", group) in subsets.index and ("other languages", group) in subsets.index:
            sentences.append(f"{capitalised(GROUP_NAMES[group])} arms change accuracy by "
                             f"{_effect(subsets.loc[('in-language', group)])} on the languages of their intermediate "
                             f"data and by {_effect(subsets.loc[('other languages', group)])} on the other languages.")
        elif ("other languages", group) in subsets.index:
            absent.append(GROUP_NAMES[group])
    if absent:
        sentences.append(f"No {eval_set[0]} language is in the intermediate data of the {_enumerate(absent)} arms, "
                         "so their effect there is purely cross-lingual.")
    scopes = subsets.index.get_level_values("scope")
    present = [subset for subset in ("size-matched", "natural-size") if subset in scopes]
    if present == ["size-matched"]:
        arms = analysis.results.arms
        sizes = arms.loc[arms["group"] != BASELINE_GROUP, "intermediate_examples"].round().astype(int)
        sentences.append(f"All arms are size-matched ({span(sizes)} intermediate examples)." if sizes.nunique() > 1
                         else f"All arms are size-matched ({sizes.iloc[0]:,} intermediate examples each), so data "
                         "size does not confound the group comparison.")
    elif present == ["natural-size"]:
        sentences.append("No arm is size-matched, so the groups may differ in intermediate data size as well as in "
                         "language.")
    elif any((subset, DIFFERENCE) in subsets.index for subset in present):
        sizes = [f"{_effect(subsets.loc[(subset, DIFFERENCE)])} among {subset} arms"
                 if (subset, DIFFERENCE) in subsets.index else f"not estimable among {subset} arms (a group has none)"
                 for subset in present]
        sentences.append(f"The English − low-resource difference is {_enumerate(sizes)}.")
    return sentences


def findings(analysis: Analysis) -> list[str]:
    """Paragraphs per evaluation set (the target XNLI first): the answer, its significance, the subsets."""
    return [" ".join(sentences) for eval_set in analysis.results.eval_sets
            for sentences in (writer(analysis, eval_set) for writer in (_answer, _significance, _subsets)) if sentences]


def caveats(analysis: Analysis, protocol: Protocol) -> list[str]:
    """What the data imposes on reading the findings: seeds, test-set sampling, model, translated data, provenance."""
    results = analysis.results
    seeds = results.seeds
    notes = []
    if len(seeds) < MIN_SEEDS:
        notes.append(f"Only {plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}), fewer than "
                     f"{MIN_SEEDS}: the spread across seeds (± in the tables) is poorly estimated.")
    notes.append("The bootstrap intervals and tests resample test examples with the trained models fixed: they "
                 "capture test-set sampling, not training variance across seeds, which the ± std shows separately.")
    for eval_set in results.eval_sets:
        full = FULL_TEST_SIZES.get(eval_set[0])
        sizes = results.sizes(eval_set).values()
        if eval_set[1] == "test" and full and max(sizes) < full:
            notes.append(f"The {eval_set[0]} test sets are sampled: {span(sizes)} of {full} examples per language, so "
                         "intervals are wider than with the full test sets.")
    model = protocol.model
    notes.append(f"All results are for one model, {model}; the benefit of intermediate-task training depends on "
                 "model size and may differ for larger models." if model else
                 "study.json does not record the model, so the results cannot be tied to a model size.")
    translated = protocol.translated([arm for arm in results.arms.index if arm != results.baseline])
    if translated:
        notes.append(f"Arm{'s' * (len(translated) > 1)} {_enumerate(translated)} train{'s' * (len(translated) == 1)} "
                     "on machine-translated data; "
                     "translation artefacts (translationese, mistranslated labels) may make "
                     f"{'it' if len(translated) == 1 else 'them'} behave differently from native data.")
    if protocol.dirty:
        notes.append("The code had uncommitted changes when the study ran, so its git commit alone does not "
                     "reproduce it.")
    return notes
