"""`xstilts export-predictions`: the predictions of a run, or of one arm and seed of a study, in XTREME's layout
(`OUT/TASK/SPLIT-LANG.tsv`, `.json` for QA), read from the per-language predictions files xstilts writes:

- a label per example (classification, multiple choice, retrieval), one per line in data order;
- a tag per word (token tagging), one per line, a blank line between sentences;
- span QA: a JSON object mapping each question's id to the predicted answer text (SQuAD-style).

DIR is a run directory, or a study directory or an `xstilts export` of one (its predictions compressed).

OUT/README.md lists every file with its count and says which evaluations were a subsample (`max_examples`) or
skipped unlabelled rows: their files hold those examples only, so they do not line up with XTREME's own
test files."""

from __future__ import annotations

import csv
import difflib
import gzip
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from xstilts.config import EvalData, load_config
from xstilts.errors import XstiltsError
from xstilts.manifest import write_text_atomically
from xstilts.names import path_component
from xstilts.phases import is_done, read_result
from xstilts.study import read_spec

README = "README.md"


@dataclass(frozen=True)
class Evaluation:
    """A finished evaluation to export: its set (task, split, cap) and its folder."""

    data: EvalData
    folder: Path


@dataclass(frozen=True)
class Written:
    """One file written: where, what it holds, how many predictions, and why it is not the whole split (or '')."""

    path: str
    task: str
    split: str
    language: str
    count: int
    partial: str


def _safe(name: str, what: str) -> str:
    """`name` when it can be one path component, else one line naming it."""
    try:
        return path_component(name)
    except ValueError as error:
        raise XstiltsError(f"{what}: {error}") from None


def _run_evaluations(run_dir: Path) -> list[Evaluation]:
    """A run's finished evaluations (`eval-TASK-SPLIT/` of the evaluations its config.yaml lists)."""
    config = load_config(run_dir / "config.yaml")
    folders = [(data, run_dir / f"eval-{_safe(data.task, 'config.yaml')}-{data.split}") for data in config.evaluate]
    return [Evaluation(data, folder) for data, folder in folders if is_done(folder)]


def _choose(value: str, known: list[str], option: str, suggest: bool = True) -> str:
    """`value` when it is among `known`, else one line with the closest name (`suggest`) or the list."""
    if value in known:
        return value
    close = difflib.get_close_matches(value, known, n=1) if suggest else []
    hint = f"did you mean {close[0]!r}?" if close else f"its {option.strip('-')}s: {', '.join(known)}"
    raise XstiltsError(f"{option} {value!r} has no results in this study ({hint})")


def _study_evaluations(study_dir: Path, arm: str | None, seed: int | None) -> list[Evaluation]:
    """One arm and seed's finished evaluations of a study (from results.csv)."""
    spec = read_spec(study_dir)
    path = study_dir / "results.csv"
    if not path.is_file():
        raise XstiltsError(f"{study_dir}: no results.csv (has the study finished?)")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    arms = list(dict.fromkeys(row["arm"] for row in rows))
    if arm is None or seed is None:
        raise XstiltsError(f"{study_dir} is a study: choose --arm (its arms: {', '.join(arms)}) and --seed")
    arm = _choose(arm, arms, "--arm")
    seeds = list(dict.fromkeys(row["seed"] for row in rows if row["arm"] == arm))
    chosen = _choose(str(seed), seeds, "--seed", suggest=False)
    caps = {(data.task, data.split): data for data in spec.evaluate}
    nodes = dict.fromkeys((row["task"], row["split"], row["eval_node"]) for row in rows
                          if row["arm"] == arm and row["seed"] == chosen)
    return [Evaluation(caps.get((task, split)) or EvalData(task=task, split=split),
                       study_dir / "nodes" / _safe(node, f"{path}: eval_node")) for task, split, node in nodes]


def _read(path: Path) -> list[dict]:
    """A predictions file's rows, in data order (by `index`); an export's `.csv.gz` where there is no `.csv`."""
    packed = path.with_name(path.name + ".gz")
    try:
        with (gzip.open(packed, "rt", encoding="utf-8", newline="") if not path.exists() and packed.is_file()
              else open(path, newline="", encoding="utf-8")) as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise XstiltsError(f"{path}: predictions file not found") from None
    try:
        return sorted(rows, key=lambda row: int(row["index"]))
    except (KeyError, ValueError):
        raise XstiltsError(f"{path}: not a predictions file (no integer 'index' column)") from None


def _format(rows: list[dict], path: Path) -> tuple[str, str, int]:
    """(file suffix, file text, number of predictions) of one language's predictions, by the file's columns:
    span QA (`id`), tags per word (`sentence`), tags per sentence (`predictions`), or one label per example."""
    columns = set(rows[0]) if rows else set()
    if {"id", "prediction"} <= columns:
        answers = {row["id"]: row["prediction"] for row in rows}
        return "json", json.dumps(answers, ensure_ascii=False, indent=1) + "\n", len(answers)
    if {"sentence", "prediction"} <= columns:
        sentences: dict[str, list[str]] = {}
        for row in rows:
            sentences.setdefault(row["sentence"], []).append(row["prediction"])
        tags = list(sentences.values())
    elif "predictions" in columns:
        tags = [row["predictions"].split(" ") for row in rows]
    elif "prediction" in columns:
        return "tsv", "".join(f"{row['prediction']}\n" for row in rows), len(rows)
    else:
        raise XstiltsError(f"{path}: no 'prediction' or 'predictions' column")
    return "tsv", "\n\n".join("\n".join(sentence) for sentence in tags) + "\n", sum(map(len, tags))


def _partial(data: EvalData, provenance: list[dict]) -> str:
    """Why an evaluation of one language holds fewer than its split's examples: a cap, unlabelled rows ('')."""
    examples = sum(entry.get("examples", 0) for entry in provenance)
    skipped = sum(entry.get("skipped_unlabelled", 0) for entry in provenance)
    reasons = [f"a subsample of {data.max_examples} of {examples} examples (max_examples)"] \
        if data.max_examples and data.max_examples < examples else []
    reasons += [f"{skipped} unlabelled rows skipped"] if skipped else []
    return "; ".join(reasons)


def _export(evaluation: Evaluation, output: Path) -> list[Written]:
    """Write one evaluation's languages into OUT/TASK/."""
    result = read_result(evaluation.folder)
    task = _safe(result["task"], f"{evaluation.folder}/result.json: task")
    written = []
    for language in result["languages"]:
        language = _safe(language, f"{evaluation.folder}/result.json: language")
        source = evaluation.folder / "predictions" / f"{language}.csv"
        suffix, text, count = _format(_read(source), source)
        name = f"{task}/{result['split']}-{language}.{suffix}"
        write_text_atomically(output / name, text)
        provenance = [entry for entry in result.get("data", []) if entry.get("language") == language]
        written.append(Written(name, task, result["split"], language, count, _partial(evaluation.data, provenance)))
    return written


def _readme(source: str, written: list[Written]) -> str:
    lines = ["# Predictions in XTREME's layout", "",
             f"Written by `xstilts export-predictions` from {source}. A `.tsv` holds one prediction per line in "
             "data order (token tagging: one tag per word, a blank line between sentences); a `.json` maps each "
             "question's id to its predicted answer. A file marked partial holds only the examples xstilts "
             "evaluated, so it does not line up with XTREME's full test files.", "",
             "| file | task | split | language | predictions | partial |", "|---|---|---|---|---:|---|"]
    lines += [f"| {w.path} | {w.task} | {w.split} | {w.language} | {w.count} | {w.partial or 'no'} |" for w in written]
    return "\n".join(lines) + "\n"


def export_predictions(directory: Path, output: Path, arm: str | None = None, seed: int | None = None) -> str:
    """Write a run's (or a study arm and seed's) predictions into `output` in XTREME's layout, with a README;
    returns a summary line. A subsampled evaluation is written as it is, with a one-line warning."""
    if (directory / "study.json").is_file():
        evaluations, source = _study_evaluations(directory, arm, seed), f"`{directory}`, arm {arm}, seed {seed}"
    elif (directory / "config.yaml").is_file():
        if arm is not None or seed is not None:
            raise XstiltsError(f"{directory} is a run: --arm and --seed choose a run of a study")
        evaluations, source = _run_evaluations(directory), f"the run `{directory}`"
    else:
        raise XstiltsError(f"{directory}: neither a study directory (study.json) nor a run directory (config.yaml)")
    if not evaluations:
        raise XstiltsError(f"{directory}: no finished evaluation to export")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise XstiltsError(f"{output}: --output must be a new or empty folder")
    written = [file for evaluation in evaluations for file in _export(evaluation, output)]
    write_text_atomically(output / README, _readme(source, written))
    partial = sorted({f"{w.task}/{w.split}" for w in written if w.partial})
    if partial:
        print(f"xstilts: warning: {', '.join(partial)}: predictions of part of the split only (a subsample or "
              f"unlabelled rows); see {output / README}", file=sys.stderr)
    return f"{output}: {len(written)} prediction files of {len({w.task for w in written})} task(s)"
