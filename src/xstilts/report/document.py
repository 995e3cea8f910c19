"""The report's content and order: findings, results per evaluation set, method and protocol, as render blocks."""

from __future__ import annotations

import math

from xstilts.report.analysis import ARM_GROUPS, AVERAGE, DIFFERENCE, SUBSETS, Analysis
from xstilts.report.findings import aa_findings, caveats, control_findings, findings, primary_findings
from xstilts.report.formatting import (GROUP_NAMES, bracketed, capitalised, metric_name, p_cell, plural, points, span,
                                       with_std)
from xstilts.report.plots import plot_file
from xstilts.report.protocol import Protocol, flatten, text
from xstilts.report.render import Block, Bullets, Heading, Image, Paragraph, Table
from xstilts.report.results import BASELINE_GROUP, EvalSet
from xstilts.report.statistics import ALPHA, CONFIDENCE, POWER

QUESTION = ("Does intermediate-task training on low-resource-language tasks help zero-shot cross-lingual transfer "
            "to XNLI more or less than training on English intermediate tasks?")
ARM_SPEC_SHOWN = ("name", "group", "tasks")


def main_table(analysis: Analysis, eval_set: EvalSet) -> Table:
    """Arms (baseline first, then by group) x languages and average: the score ± std over seeds, and below it
    the change against the baseline ± std of the seed-paired changes, * where Holm-significant."""
    results = analysis.results
    cells = analysis.cells_of(eval_set).set_index(["arm", "language"])
    columns = [*results.languages(eval_set), AVERAGE]
    arms = results.arms[results.arms.index.isin(cells.index.get_level_values("arm"))]
    rows, sections, previous = [], {}, BASELINE_GROUP
    for arm, group in arms["group"].items():
        if group != previous:
            sections[len(rows)] = capitalised(GROUP_NAMES[group])
            previous = group
        row = [arm]
        for column in columns:
            if (arm, column) not in cells.index:
                row.append("–")
                continue
            cell = cells.loc[(arm, column)]
            score = with_std(cell["score"], cell["score_std"])
            change = with_std(cell["delta"], cell["delta_std"], signed=True) + ("*" if cell["significant"] else "")
            row.append(score if group == BASELINE_GROUP else f"{score}\n{change}")
        rows.append(row)
    seeds = sorted(set(cells["seeds"]))
    caption = (f"{eval_set[0]} {eval_set[1]}: {metric_name(results.metric(eval_set))} (%), mean ± std over "
               f"{'/'.join(map(str, seeds))} seeds; below, the change against the baseline ({results.baseline}) in "
               f"points ± std of the seed-paired changes; * significant after Holm correction over "
               f"{analysis.n_tests} tests (α = {ALPHA}).")
    return Table(["arm", *columns], rows, caption, sections, numeric=True)


def _arm_table(analysis: Analysis, eval_set: EvalSet) -> Table:
    """Each arm's change in the average score with its interval, raw and Holm-adjusted p-values."""
    metric = metric_name(analysis.results.metric(eval_set))
    cells = analysis.cells_of(eval_set)
    averages = cells[(cells["language"] == AVERAGE) & (cells["group"] != BASELINE_GROUP)]
    rows = [[row["arm"], GROUP_NAMES[row["group"]], bracketed(row["delta"], row["ci_low"], row["ci_high"]),
             p_cell(row["p"]), p_cell(row["p_holm"]) + ("*" if row["significant"] else ""),
             "–" if row["mde"] != row["mde"] else points(row["mde"], signed=False)]
            for _, row in averages.iterrows()]
    return Table(["arm", "group", f"change in average {metric} [{CONFIDENCE:.0%} CI]", "p", "p (Holm)",
                  f"MDE ({POWER:.0%} power)"], rows,
                 f"Change of each arm's {metric} averaged over languages, in points, against the baseline; the "
                 "interval and p-value include training variance over seeds and test-item sampling; MDE is the "
                 "smallest change this design detects with 80% power.", numeric=True)


def _group_table(analysis: Analysis, eval_set: EvalSet, kind: str, scopes: list[str], caption: str) -> Table:
    """Rows = scopes; columns = each group's mean change and the English − low-resource difference [CI], p."""
    rows = analysis.groups_of(eval_set, kind).set_index(["scope", "group"])
    groups = [group for group in (*ARM_GROUPS, DIFFERENCE) if group in rows.index.get_level_values("group")]
    header = [kind, *(f"{capitalised(GROUP_NAMES.get(group, group))}" + (" arms" if group in GROUP_NAMES else "")
                      for group in groups)]
    header += ["p (difference)"] if DIFFERENCE in groups else []
    body = []
    for scope in scopes:
        row = [scope]
        for group in groups:
            if (scope, group) not in rows.index:
                row.append("–")
                continue
            cell = rows.loc[(scope, group)]
            row.append(bracketed(cell["value"], cell["ci_low"], cell["ci_high"])
                       + (f"\n{cell['cells']} cells" if kind == "subset" else ""))
        if DIFFERENCE in groups:
            found = (scope, DIFFERENCE) in rows.index
            row.append(p_cell(rows.loc[(scope, DIFFERENCE), "p_value"]) if found else "–")
        body.append(row)
    return Table(header, body, caption, numeric=True)


def _results_section(analysis: Analysis, eval_set: EvalSet) -> list[Block]:
    name = f"{eval_set[0]} {eval_set[1]}"
    languages = analysis.results.languages(eval_set)
    metric = metric_name(analysis.results.metric(eval_set))
    interval = f"{CONFIDENCE:.0%} CI"
    return [
        Heading(f"Results: {name}"),
        main_table(analysis, eval_set),
        _arm_table(analysis, eval_set),
        Image(plot_file("heatmap", eval_set), f"Change in {metric} (points) of each arm against the baseline on "
              f"{name}; * marks changes significant after Holm correction."),
        Heading(f"Group comparison: {name}", 3),
        _group_table(analysis, eval_set, "language", [*languages, AVERAGE],
                     f"Mean change in {metric} (points) of the arms of each group, [{interval}]; the last columns "
                     "compare English with low-resource arms (p-value not corrected for multiplicity)."),
        _group_table(analysis, eval_set, "subset", list(SUBSETS),
                     "The same, restricted to cells whose evaluation language is in the arm's intermediate data "
                     "(in-language) or not (other languages), and to size-matched or natural-size arms."),
        Image(plot_file("groups", eval_set), f"Mean change per group of arms on {name}, with {interval}s."),
        Image(plot_file("size", eval_set), f"Average {metric} on {name} against the number of intermediate "
              "training examples; error bars are ± std over seeds, the dashed line and band are the baseline's "
              "mean ± std; arms of about the same size are drawn side by side."),
    ]


def _method(analysis: Analysis) -> list[Block]:
    results = analysis.results
    parallel = [f"{task} {split}" for task, split in results.eval_sets if results.parallel((task, split))]
    scored = ", ".join(f"{metric_name(results.metric(eval_set))} on {eval_set[0]} {eval_set[1]}"
                       for eval_set in results.eval_sets)
    return [
        Heading("Statistical method"),
        Paragraph("The unit of inference is the training run (arm × seed). A run's score on a language is the mean "
                  f"over its test items of a per-item value of the evaluation's metric ({scored}). Every comparison "
                  "is a contrast: a weighted sum of run scores whose weights cancel over arms (an arm minus the "
                  "baseline, on one language or on the average over languages; the mean of a group of arms minus the "
                  "baseline; the English arms' mean change minus the low-resource arms'). For each seed s the "
                  "contrast y_s is computed from the runs trained with seed s, so whatever a seed does to all arms "
                  "alike cancels (seed blocking); the estimate is the mean of y_s over seeds, and ± after a change is "
                  "the standard deviation of y_s."),
        Paragraph("Its standard error has two parts. Training: the variance of y_s over seeds divided by the number "
                  "of seeds; it holds everything that differs between training runs (initialisation, data order, "
                  "dropout) and the noise of single test items within a run. Test items: the effect differs from "
                  "item to item and the test set is a sample of items; this part is estimated by moments (the "
                  "variance over items of the seed-averaged item effect, less its seed noise, over the number of "
                  "items; it uses the per-item values as they are, so it holds for 0/1 and graded metrics alike). "
                  + (f"The languages of {', '.join(parallel)} are translations of the same items (`parallel: true` in "
                     "the task), so an item counts once across all its languages; "
                     if parallel else "")
                  + "other test sets treat each language's items as their own sample. Intervals and two-sided "
                  f"p-values use a t distribution with seeds − 1 degrees of freedom ({CONFIDENCE:.0%} "
                  "intervals); with few seeds they are wide, as they should be. With one seed nothing is tested. "
                  "P-values below 0.001 print as <0.001. The minimum detectable effect (MDE) is "
                  f"(t(1−α/2) + t({POWER:.0%})) × SE."),
        Paragraph(f"Families: the primary contrast is pre-declared in the study spec (`primary`) and tested alone at "
                  f"α = {ALPHA}. Every arm × language change and every arm's average change form the secondary "
                  f"family ({analysis.n_tests} tests), with Holm's step-down correction. Group comparisons are "
                  "descriptive and not corrected."),
        Paragraph("The arms are the treatments studied, not a random sample of tasks: the intervals say how sure the "
                  "study is about these arms on this model and data, not how another English or low-resource task "
                  "would fare. The method was checked on simulated studies with planted truth (seed effects, "
                  "parallel-language items): with no effect it rejects at most at the nominal rate, and its "
                  "intervals cover a planted effect at about the stated level (tests/test_statistics_calibration.py)."
                  " The A/A check above applies it to two halves of the baseline's own runs."),
    ]


def _given(spec: dict, shown: tuple[str, ...]) -> dict:
    """The settings of a spec entry that are set (not None) and not shown elsewhere."""
    return {key: value for key, value in spec.items() if key not in shown and value is not None}


def _protocol(analysis: Analysis, protocol: Protocol) -> list[Block]:
    results = analysis.results
    blocks: list[Block] = [Heading("Protocol")]
    if protocol.notes:
        blocks.append(Bullets([capitalised(note) + "." for note in protocol.notes]))
    blocks.append(Table(["setting", "value"], [list(pair) for pair in protocol.settings],
                        "Study settings from study.json (model, seeds, target task and training hyperparameters)."))
    arm_rows = []
    for arm, info in results.arms.iterrows():
        spec = protocol.arms.get(arm, {})
        settings = [f"{key} = {value}" for key, value in flatten(_given(spec, ARM_SPEC_SHOWN))]
        pieces = info["intermediate_pieces"]
        arm_rows.append([arm, info["group"], "\n".join(protocol.arm_tasks(arm)) or "–",
                         ", ".join(info["languages"]) or "–", "yes" if info["size_matched"] else "no",
                         f"{info['intermediate_examples']:,.0f}",
                         "–" if math.isnan(pieces) else f"{pieces:,.0f}",  # NaN: a phase from before it was kept
                         "\n".join(settings) or "–"])
    blocks.append(Table(["arm", "group", "intermediate tasks", "languages", "size-matched", "intermediate examples",
                         "pieces consumed", "arm settings"], arm_rows,
                        "Arms: intermediate data and training settings (training settings not listed here are the "
                        "study's intermediate_train). Intermediate examples count what the arm's cap counts (a "
                        "labelled example, a span-QA question, a masked-LM text sequence); pieces consumed are "
                        "the tokenizer pieces of every sequence its intermediate phase trained on, repeats "
                        "included (mean over seeds)."))
    evaluation_rows = []
    for eval_set in results.eval_sets:
        spec = _given(protocol.evaluate.get(eval_set, {}), ("task", "split"))
        evaluation_rows.append([eval_set[0], eval_set[1], ", ".join(results.languages(eval_set)),
                                span(results.sizes(eval_set).values()),
                                "; ".join(f"{key} = {value}" for key, value in flatten(spec)) or "–"])
    blocks.append(Table(["task", "split", "languages", "examples per language", "selection"], evaluation_rows,
                        f"Evaluation sets; seeds: {', '.join(map(str, results.seeds))}."))
    if protocol.computed_on:
        blocks.append(Table(["seed", "precision", "device", "CPU"], protocol.computed_on,
                            "Where each seed was computed (manifest.json). A seed is computed at one precision on "
                            "one device kind, so its contrasts compare like with like; seeds may differ."))
    blocks.append(Table(["item", "value"], [list(pair) for pair in protocol.code], "Code version and environment "
                        "(manifest.json)."))
    if protocol.data_files:
        blocks.append(Table(["data file", "sha256"], [list(pair) for pair in protocol.data_files],
                            "Data files and their checksums (manifest.json)."))
    return blocks


def build_document(analysis: Analysis, protocol: Protocol, title: str, base_model: list[Block] = ()) -> list[Block]:
    """All blocks of the report, in order (`base_model`: the base model's own scores, after the results)."""
    results = analysis.results
    sets = ", ".join(f"{task} {split}" for task, split in results.eval_sets)
    question = text(protocol.study.get("description") or QUESTION)
    checks = [*control_findings(analysis), *aa_findings(analysis)]
    return [
        Heading(title, 1),
        Paragraph(f"{question} Each of the {len(results.arms) - 1} intermediate-task arms is compared with the "
                  f"baseline arm {results.baseline!r} (no intermediate training) on {sets}, over "
                  f"{plural(len(results.seeds), 'seed')}."),
        *([Heading("Design checks"), *(Paragraph(paragraph) for paragraph in checks)] if checks else []),
        Heading("Primary question"),
        *(Paragraph(paragraph) for paragraph in primary_findings(analysis, protocol)),
        Heading("Findings"),
        *(Paragraph(paragraph) for paragraph in findings(analysis)),
        Heading("Caveats", 3),
        Bullets(caveats(analysis, protocol)),
        *(block for eval_set in results.eval_sets for block in _results_section(analysis, eval_set)),
        *base_model,
        *_method(analysis),
        *_protocol(analysis, protocol),
    ]
