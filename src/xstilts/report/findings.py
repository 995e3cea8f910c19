"""The findings and caveats of the report, written from the computed numbers (no result prose is fixed)."""

from __future__ import annotations

import math

import pandas as pd

from xstilts.report.analysis import ARM_GROUPS, AVERAGE, CONTROL, DIFFERENCE, ENGLISH, LOW_RESOURCE, Analysis
from xstilts.report.formatting import GROUP_NAMES, capitalised, interval, metric_name, p_value, plural, points, span
from xstilts.report.protocol import Protocol, task_label
from xstilts.report.results import BASELINE_GROUP, EvalSet
from xstilts.report.statistics import ALPHA, POWER, seeds_needed

PLANNED_EFFECTS = (0.005, 0.01)  # effects (fractions) for which the report gives the seeds needed

FULL_TEST_SIZES = {"xnli": 5010, "americasnli": 750}  # test examples per language
FEW_SEEDS = 3
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
    changed = f"changed average {metric_name(analysis.results.metric(eval_set))} by "
    parts = [f"{GROUP_NAMES[group]} intermediate tasks ({plural(int(arm_counts[group]), 'arm')}) "
             f"{changed if not index else 'by '}{_effect(overall.loc[group])}"
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
    elif pd.isna(difference["ci_low"]):  # no interval (one seed)
        sentences.append(f"With no interval the study cannot say which group helped more: {stated}.")
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


def seeds_sentence(estimate, item_scale: float = 1.0) -> str:
    """'N seeds would detect 0.5 points and M seeds 1.0 point with 80% power' from measured variances."""
    parts = []
    for effect in PLANNED_EFFECTS:
        seeds = seeds_needed(estimate, effect, item_scale)
        parts.append(f"{points(effect, signed=False)} points: "
                     + (f"{seeds} seeds" if seeds else "not reachable by seeds alone, the test items limit it"))
    return f"seeds needed for {POWER:.0%} power at α = {ALPHA} ({'; '.join(parts)})"


def _scope(analysis: Analysis, protocol: Protocol) -> str:
    """What the primary answer is about: these arms, this model, this target size."""
    primary = analysis.primary
    target = protocol.study.get("target") if isinstance(protocol.study.get("target"), dict) else {}
    return (f"This answer is about these arms ({_enumerate(list(primary.english))} against "
            f"{_enumerate(list(primary.low_resource))}), the model ({protocol.model or 'not recorded'}) and the target "
            f"{task_label(target.get('task')) if target.get('task') else 'not recorded'}; the arms are the treatments "
            "studied, not a sample of English or low-resource tasks, so it does not say how other tasks would fare.")


def primary_findings(analysis: Analysis, protocol: Protocol) -> list[str]:
    """The answer to the pre-declared primary question, tested alone, with its power."""
    primary = analysis.primary
    if primary is None:
        return ["The study has no English and low-resource arms on a common evaluation, so the primary question "
                "(English minus low-resource) cannot be asked of it."]
    estimate = primary.estimate
    eval_set = primary.eval_set
    name = f"{eval_set[0]} {eval_set[1]} ({len(analysis.results.languages(eval_set))} languages)"
    origin = "declared in the study spec" if primary.declared else "the default: every English and low-resource arm"
    head = (f"Primary question ({origin}, tested alone at α = {ALPHA}): on {name}, the English arms changed "
            f"average {metric_name(analysis.results.metric(eval_set))} by {points(estimate.value)} points more than "
            "the low-resource arms")
    if not estimate.resolvable:
        return [f"{head}. With {plural(estimate.seeds, 'seed')} the training variance is unknown, so this design "
                "cannot resolve anything: no interval, no p-value, nothing is marked significant. Run at least 2 "
                "seeds (see `xstilts plan` for how many the question needs).", _scope(analysis, protocol)]
    stated = f"({interval(estimate.ci_low, estimate.ci_high)}, {p_value(estimate.p_value)}, {estimate.seeds} seeds)"
    if estimate.significant():
        winner = "English" if estimate.value > 0 else "low-resource"
        verdict = f"{head} {stated}: the {winner} arms helped more."
    else:
        verdict = (f"{head} {stated}. This is not significant: the study cannot tell which group helps more, "
                   "and the interval says how large a difference it cannot exclude.")
    power = (f"The smallest difference this design detects with {POWER:.0%} power is {points(estimate.mde(), False)} "
             f"points (from the measured variances: training "
             f"{points(estimate.train_variance ** 0.5, False)} points std per seed, test items "
             f"{points(estimate.item_variance ** 0.5, False)} points standard error); {seeds_sentence(estimate)}.")
    return [verdict, power, _scope(analysis, protocol)]


def control_findings(analysis: Analysis) -> list[str]:
    """The positive control: arms expected to help a lot (group `control`), each tested alone on the average of
    the A/A check's evaluation set. A design that cannot see a known effect says so first."""
    cells = analysis.cells_of(analysis.aa_eval_set)
    controls = cells[(cells["group"] == CONTROL) & (cells["language"] == AVERAGE)]
    name = " ".join(analysis.aa_eval_set)
    if controls.empty:
        return [] if analysis.primary is None else [
            f"This study has no positive control (an arm of group {CONTROL!r} expected to help a lot), so nothing "
            f"shows that its design can detect a known effect on {name}."]
    sentences = []
    metric = metric_name(analysis.results.metric(analysis.aa_eval_set))
    for _, cell in controls.iterrows():
        head = (f"Positive control: the arm {cell['arm']!r}, expected to help a lot, changed average {metric} on "
                f"{name} by {points(cell['delta'])} points")
        if math.isnan(cell["p"]):
            sentences.append(f"{head}; with {plural(int(cell['seeds']), 'seed')} the design cannot test it.")
        elif cell["ci_low"] > 0:
            sentences.append(f"{head} ({interval(cell['ci_low'], cell['ci_high'])}, {p_value(cell['p'])}, tested "
                             f"alone, {plural(int(cell['seeds']), 'seed')}): the design detected it.")
        else:
            sentences.append(f"{head} ({interval(cell['ci_low'], cell['ci_high'])}, {p_value(cell['p'])}, tested "
                             f"alone, {plural(int(cell['seeds']), 'seed')}): the design did NOT detect this known "
                             "effect, so it can miss real ones; read the primary question's answer with that in "
                             "mind.")
    return sentences


def aa_findings(analysis: Analysis) -> list[str]:
    """The A/A check: two halves of the baseline's seeds, which differ only by training randomness."""
    aa = analysis.aa
    if aa is None:
        return []
    return [f"Calibration check (A/A): the baseline's runs split by seed into two pseudo-arms of {aa.seeds} seeds "
            f"each differ by {points(aa.value)} points in average "
            f"{metric_name(analysis.results.metric(analysis.aa_eval_set))} on {' '.join(analysis.aa_eval_set)} "
            f"({interval(aa.ci_low, aa.ci_high)}, "
            f"{p_value(aa.p_value)}). They differ only by training randomness, so a significant difference here "
            "would mean the method understates it."
            + (" It is significant: distrust this report's tests." if aa.significant() else "")]


def _significance(analysis: Analysis, eval_set: EvalSet) -> list[str]:
    """How many cells are significant after Holm correction, and the best and worst arms on average."""
    cells = analysis.cells_of(eval_set)
    tested = cells[(cells["group"] != BASELINE_GROUP) & (cells["language"] != AVERAGE)]
    if not analysis.resolvable:
        return [f"With {plural(len(analysis.results.seeds), 'seed')} no arm × language change can be tested."]
    significant = tested[tested["significant"]]
    gains = int((significant["delta"] > 0).sum())
    counted = (f"{len(significant)} of the {len(tested)} arm × language changes on {eval_set[0]} "
               f"{'is' if len(significant) == 1 else 'are'} significant at α = {ALPHA} "
               f"({plural(gains, 'gain')}, {plural(len(significant) - gains, 'loss')})" if len(significant) else
               f"none of the {len(tested)} arm × language changes on {eval_set[0]} is significant at α = {ALPHA}")
    sentences = [f"In the secondary family (Holm correction over all {analysis.n_tests} arm × language and "
                 f"arm-average tests of this report), {counted}."]
    averages = cells[(cells["group"] != BASELINE_GROUP) & (cells["language"] == AVERAGE)].sort_values("delta")
    if len(averages) > 1:
        best, worst = averages.iloc[-1], averages.iloc[0]
        mark = {True: ", significant", False: ", not significant"}
        sentences.append(f"The largest average change is {best['arm']}'s ({points(best['delta'])} points"
                         f"{mark[bool(best['significant'])]}), the smallest {worst['arm']}'s "
                         f"({points(worst['delta'])} points{mark[bool(worst['significant'])]}).")
    return sentences


def _pieces(arms: pd.DataFrame) -> list[str]:
    """What size matching by examples leaves unmatched: the pieces each size-matched arm consumed, when they
    differ by more than 10%."""
    pieces = arms.loc[(arms["group"] != BASELINE_GROUP) & arms["size_matched"], "intermediate_pieces"]
    pieces = pieces.dropna().round().astype(int)
    if pieces.empty or pieces.min() >= 0.9 * pieces.max():
        return []
    listed = ", ".join(f"{arm} {count:,}" for arm, count in pieces.sort_values().items())
    return [f"The size-matched arms still consumed different amounts of text in their intermediate phase "
            f"(tokenizer pieces: {listed}): a cap counts examples, and examples differ in length and number."]


def _subsets(analysis: Analysis, eval_set: EvalSet) -> list[str]:
    """In-language vs other languages per group; English vs low-resource among size-matched and natural-size arms."""
    subsets = analysis.groups_of(eval_set, "subset").set_index(["scope", "group"])
    metric = metric_name(analysis.results.metric(eval_set))
    sentences, absent = [], []
    for group in ARM_GROUPS:
        if ("in-language", group) in subsets.index and ("other languages", group) in subsets.index:
            sentences.append(f"{capitalised(GROUP_NAMES[group])} arms change {metric} by "
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
    """Secondary paragraphs per evaluation set (the target XNLI first): group changes, significance, subsets."""
    return [" ".join(sentences) for eval_set in analysis.results.eval_sets
            for sentences in (writer(analysis, eval_set) for writer in (_answer, _significance, _subsets)) if sentences]


def caveats(analysis: Analysis, protocol: Protocol) -> list[str]:
    """What the data imposes on reading the findings: seeds, test-set sampling, unmatched text in size-matched
    arms, model, translated data, provenance."""
    results = analysis.results
    seeds = results.seeds
    notes = []
    if len(seeds) < FEW_SEEDS:
        notes.append(f"Only {plural(len(seeds), 'seed')} ({', '.join(map(str, seeds))}), fewer than "
                     f"{FEW_SEEDS}: the spread across seeds (± in the tables) is poorly estimated.")
    if not all(results.parallel(eval_set) for eval_set in results.eval_sets if eval_set[0] == "xnli"):
        notes.append("results.csv does not mark xnli as parallel (its languages share items), so its items were "
                     "treated as independent per language: intervals of averages are too narrow. Re-run "
                     "`xstilts study` to rewrite the table.")
    for eval_set in results.eval_sets:
        full = FULL_TEST_SIZES.get(eval_set[0])
        sizes = results.sizes(eval_set).values()
        if eval_set[1] == "test" and full and max(sizes) < full:
            notes.append(f"The {eval_set[0]} test sets are sampled: {span(sizes)} of {full} examples per language, so "
                         "intervals are wider than with the full test sets.")
    notes += _pieces(results.arms)
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
