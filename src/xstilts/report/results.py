"""The results table of a study and each row's per-example scores, loaded and validated."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd

from xstilts.errors import XstiltsError
from xstilts.report.statistics import linearized_ratio
from xstilts.study_spec import BASELINE, ArmGroup
from xstilts.task_types import item_column

BASELINE_GROUP = BASELINE
GROUPS = (BASELINE_GROUP, *get_args(ArmGroup))
TARGET_TASK = "xnli"
STRING_COLUMNS = ("arm", "group", "arm_languages", "task", "split", "language", "metric", "eval_node",
                  "target_node", "intermediate_node", "predictions")
SCORE_TOLERANCE = 1e-3
ENTITY_COUNTS = {"found", "gold_entities", "predicted_entities"}  # per-sentence counts of span F1 (NER)


def _integer(text: str) -> int:
    value = float(text)
    if not value.is_integer():
        raise ValueError
    return int(value)


def _count_or_missing(text: str) -> float:
    return float(_integer(text)) if text.strip() else float("nan")


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered not in {"true", "false", "1", "0"}:
        raise ValueError
    return lowered in {"true", "1"}


PARSERS: dict[str, tuple[Callable[[str], object], str]] = {
    "size_matched": (_boolean, "true or false"),
    "intermediate_examples": (_integer, "an integer"),
    "seed": (_integer, "an integer"),
    "score": (float, "a number"),
    "n": (_integer, "an integer"),
}
COLUMNS = (*STRING_COLUMNS, *PARSERS)
OPTIONAL = {  # column -> (parser, expected, default)
    "parallel": (_boolean, "true or false", "false"),
    "intermediate_pieces": (_count_or_missing, "an integer or empty", ""),  # empty: a phase from before it was kept
}
EvalSet = tuple[str, str]  # (task, split)


@dataclass(frozen=True)
class Results:
    """Validated rows (one per arm x seed x task x split x language) with an `item_scores` column holding each
    row's per-example values of its metric (in [0, 1]; 0/1 for accuracy), ordered by example index (identical
    order for rows of one test set). All rows of one evaluation set share their metric."""

    path: Path
    rows: pd.DataFrame

    @cached_property
    def baseline(self) -> str:
        """The name of the baseline arm."""
        return str(self.rows.loc[self.rows["group"] == BASELINE_GROUP, "arm"].iloc[0])

    @cached_property
    def arms(self) -> pd.DataFrame:
        """One row per arm, baseline first, then by group (English, low-resource, mixed, masked-LM), then as
        listed; columns group, languages (tuple), size_matched, intermediate_examples (examples in its data)
        and intermediate_pieces (pieces its intermediate phase consumed; NaN when not recorded), means over rows."""
        table = self.rows.groupby("arm", sort=False).agg(
            group=("group", "first"), arm_languages=("arm_languages", "first"),
            size_matched=("size_matched", "first"), intermediate_examples=("intermediate_examples", "mean"),
            intermediate_pieces=("intermediate_pieces", "mean"))
        table["languages"] = [tuple(filter(None, value.split(";"))) for value in table.pop("arm_languages")]
        order = np.argsort([GROUPS.index(group) for group in table["group"]], kind="stable")
        return table.iloc[order]

    @property
    def seeds(self) -> list[int]:
        """All seeds in the table, sorted."""
        return sorted(self.rows["seed"].unique().tolist())

    @property
    def eval_sets(self) -> list[EvalSet]:
        """(task, split) pairs: XNLI first, test before other splits, then in order of appearance."""
        pairs = list(dict.fromkeys(zip(self.rows["task"], self.rows["split"])))
        return sorted(pairs, key=lambda pair: (pair[0] != TARGET_TASK, pair[1] != "test"))

    def parallel(self, eval_set: EvalSet) -> bool:
        """Whether the languages of an evaluation set are translations of the same items (`parallel` in its task)."""
        return bool(self._select(eval_set)["parallel"].all())

    def languages(self, eval_set: EvalSet) -> list[str]:
        """Languages of one evaluation set, in order of appearance."""
        return list(dict.fromkeys(self._select(eval_set)["language"]))

    def sizes(self, eval_set: EvalSet) -> dict[str, int]:
        """Number of test examples per language of one evaluation set."""
        return self._select(eval_set).groupby("language", sort=False)["n"].first().to_dict()

    def metric(self, eval_set: EvalSet) -> str:
        """The metric of one evaluation set (its rows' `metric`)."""
        return str(self._select(eval_set)["metric"].iloc[0])

    def item_scores(self, eval_set: EvalSet) -> dict[tuple[str, str], dict[int, np.ndarray]]:
        """(arm, language) -> seed -> per-example scores, for every run on one evaluation set."""
        rows = self._select(eval_set)
        runs: dict[tuple[str, str], dict[int, np.ndarray]] = {}
        for arm, language, seed, scores in zip(rows["arm"], rows["language"], rows["seed"], rows["item_scores"]):
            runs.setdefault((arm, language), {})[int(seed)] = scores
        return runs

    def _select(self, eval_set: EvalSet) -> pd.DataFrame:
        return self.rows[(self.rows["task"] == eval_set[0]) & (self.rows["split"] == eval_set[1])]


def _read_jsonl(path: Path) -> pd.DataFrame:
    """JSON lines, one object per row; missing keys and nulls become empty cells."""
    records, lines = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise XstiltsError(f"{path}:{number}: invalid JSON ({error.msg})") from None
        if not isinstance(record, dict):
            raise XstiltsError(f"{path}:{number}: expected a JSON object")
        records.append(record)
        lines.append(number)
    table = pd.DataFrame(records, dtype=object).fillna("").map(str)
    table["line"] = lines
    return table


def _read_rows(path: Path) -> pd.DataFrame:
    """All cells as strings, with the file line of each row in column `line`."""
    try:
        if path.suffix == ".jsonl":
            return _read_jsonl(path)
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise XstiltsError(f"{path}: unreadable table ({str(error).splitlines()[0]})") from None
    table["line"] = np.arange(len(table)) + 2
    return table


def _typed(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Check the columns are present, parse the typed ones and check value ranges."""
    if table.empty:
        raise XstiltsError(f"{path}: no rows")
    for column in COLUMNS:
        if column not in table.columns:
            hint = ("; a table written before results named their metric (`accuracy` column): run `xstilts study` "
                    "again to rewrite it (its evaluations are scored again, trained phases stay cached)"
                    if column in ("metric", "score") and "accuracy" in table.columns else "")
            raise XstiltsError(f"{path}: missing column {column!r}{hint}")
    for column, (_, _, default) in OPTIONAL.items():
        if column not in table.columns:
            table[column] = default
    rows = table[[*COLUMNS, *OPTIONAL, "line"]].copy()
    parsers = {**PARSERS, **{column: (parse, expected) for column, (parse, expected, _) in OPTIONAL.items()}}
    for column, (parse, expected) in parsers.items():
        values = []
        for line, text in zip(rows["line"], rows[column]):
            try:
                values.append(parse(text))
            except ValueError:
                raise XstiltsError(f"{path}:{line}: column {column!r}: {text!r} is not {expected}") from None
        rows[column] = values
    checks = {
        "group": (rows["group"].isin(GROUPS), f"one of {', '.join(GROUPS)}"),
        "score": (rows["score"].between(0, 1), "between 0 and 1"),
        "n": (rows["n"] > 0, "positive"),
        "intermediate_examples": (rows["intermediate_examples"] >= 0, "non-negative"),
    }
    required = ("arm", "task", "split", "language", "metric", "predictions")
    checks |= {column: (rows[column] != "", "non-empty") for column in required}
    for column, (valid, expected) in checks.items():
        if not valid.all():
            first = valid.idxmin()
            raise XstiltsError(f"{path}:{table.at[first, 'line']}: column {column!r}: {table.at[first, column]!r} "
                               f"is not {expected}")
    return rows


def _check_structure(rows: pd.DataFrame, path: Path) -> None:
    """One baseline arm, one group per arm, one metric per evaluation set, no duplicated arm x seed x test set."""
    key = ["arm", "seed", "task", "split", "language"]
    duplicated = rows[rows.duplicated(key)]
    if not duplicated.empty:
        row = duplicated.iloc[0]
        raise XstiltsError(f"{path}:{row['line']}: duplicate row for arm {row['arm']!r}, seed {row['seed']}, "
                           f"{row['task']}/{row['split']}/{row['language']}")
    groups = rows.drop_duplicates(["arm", "group"])
    conflicting = groups[groups.duplicated("arm")]
    if not conflicting.empty:
        row = conflicting.iloc[0]
        raise XstiltsError(f"{path}:{row['line']}: column 'group': arm {row['arm']!r} is {row['group']!r} here "
                           f"but {groups.loc[groups['arm'] == row['arm'], 'group'].iloc[0]!r} in an earlier row")
    metrics = rows.drop_duplicates(["task", "split", "metric"])
    conflicting = metrics[metrics.duplicated(["task", "split"])]
    if not conflicting.empty:
        row = conflicting.iloc[0]
        first = metrics.loc[(metrics["task"] == row["task"]) & (metrics["split"] == row["split"]), "metric"].iloc[0]
        raise XstiltsError(f"{path}:{row['line']}: column 'metric': {row['task']}/{row['split']} is scored by "
                           f"{row['metric']!r} here but by {first!r} in an earlier row")
    baselines = rows.loc[rows["group"] == BASELINE_GROUP].drop_duplicates("arm")
    if baselines.empty:
        raise XstiltsError(f"{path}: no baseline arm (no row with group {BASELINE_GROUP!r})")
    if (rows["group"] == BASELINE_GROUP).all():
        raise XstiltsError(f"{path}: only the baseline arm; there is nothing to compare")
    if len(baselines) > 1:
        row = baselines.iloc[1]
        raise XstiltsError(f"{path}:{row['line']}: a second baseline arm {row['arm']!r} "
                           f"(the first is {baselines['arm'].iloc[0]!r})")


def _read_predictions(study_dir: Path, row: pd.Series, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(example indices, per-example scores of the row's metric) of one row's predictions file, sorted by index
    and checked against the row's `n` and `score`."""
    file = study_dir / row["predictions"]
    where = f"{path.name} line {row['line']}"
    if not file.resolve().is_relative_to(study_dir.resolve()):
        raise XstiltsError(f"{path}:{row['line']}: column 'predictions' points outside the study folder "
                           f"({row['predictions']!r})")
    column = item_column(row["metric"])
    try:
        table = pd.read_csv(file, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise XstiltsError(f"{file}: predictions file not found ({where})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise XstiltsError(f"{file}: unreadable predictions ({str(error).splitlines()[0]})") from None
    for name in ("index", column):
        if name not in table.columns:
            raise XstiltsError(f"{file}: missing column {name!r} ({where}, metric {row['metric']!r})")
    indices, scores = (pd.to_numeric(table[name], errors="coerce") for name in ("index", column))
    checks = {"index": (indices.isna() | (indices % 1 != 0), "an integer"),
              column: (~scores.between(0, 1), "a number between 0 and 1")}
    for name, (bad, expected) in checks.items():
        if bad.any():
            first = int(np.flatnonzero(bad.to_numpy())[0])
            raise XstiltsError(f"{file}:{first + 2}: column {name!r}: {table[name].iloc[first]!r} is not {expected}")
    table["index"], table[column] = indices.astype(int), scores.astype(float)
    repeated = table["index"].duplicated()
    if repeated.any():
        first = int(np.flatnonzero(repeated.to_numpy())[0])
        raise XstiltsError(f"{file}:{first + 2}: column 'index': duplicate example index {table['index'].iloc[first]}")
    if len(table) != row["n"]:
        raise XstiltsError(f"{path}:{row['line']}: column 'n' is {row['n']} but {file} has {len(table)} predictions")
    table = table.sort_values("index")
    values = table[column].to_numpy()
    if ENTITY_COUNTS <= set(table.columns):  # corpus-level span F1: a ratio of sums, not a mean over items
        counts = {name: pd.to_numeric(table[name], errors="coerce") for name in ENTITY_COUNTS}
        for name, numbers in counts.items():
            if (numbers.isna() | (numbers < 0) | (numbers % 1 != 0)).any():
                raise XstiltsError(f"{file}: column {name!r} holds a value that is not a count")
        values = linearized_ratio(2 * counts["found"].to_numpy(),
                                  (counts["gold_entities"] + counts["predicted_entities"]).to_numpy())
    if abs(values.mean() - row["score"]) > SCORE_TOLERANCE:
        raise XstiltsError(f"{path}:{row['line']}: column 'score' is {row['score']:.4f} but the mean of "
                           f"{column!r} in {file} is {values.mean():.4f}")
    return table["index"].to_numpy(), values


def load_results(study_dir: Path) -> Results:
    """Read `results.csv` (else `results.jsonl`) and every predictions file it names; errors name the file and line.

    Rows of one task/split/language must share their test examples (the same set of example indices); so must
    all languages of a parallel evaluation set."""
    path = next((study_dir / name for name in ("results.csv", "results.jsonl") if (study_dir / name).is_file()), None)
    if path is None:
        raise XstiltsError(f"{study_dir}: no results.csv or results.jsonl (has the study finished?)")
    rows = _typed(_read_rows(path), path)
    _check_structure(rows, path)
    reference: dict[tuple[str, str, str], tuple[np.ndarray, str]] = {}
    item_scores = []
    for _, row in rows.iterrows():
        indices, values = _read_predictions(study_dir, row, path)
        test_set = (row["task"], row["split"], row["language"])
        first_indices, first_file = reference.setdefault(test_set, (indices, row["predictions"]))
        if not np.array_equal(indices, first_indices):
            raise XstiltsError(f"{study_dir / row['predictions']}: example indices differ from {first_file} "
                               f"(rows of {'/'.join(test_set)} must share their test examples)")
        item_scores.append(values)
        if row["parallel"]:
            parallel_key = (row["task"], row["split"], "all languages")
            first_indices, first_file = reference.setdefault(parallel_key, (indices, row["predictions"]))
            if not np.array_equal(indices, first_indices):
                raise XstiltsError(f"{study_dir / row['predictions']}: example indices differ from {first_file}, but "
                                   f"{row['task']}/{row['split']} is parallel (its languages share their items)")
    rows["item_scores"] = pd.Series(item_scores, index=rows.index, dtype=object)
    return Results(path, rows.reset_index(drop=True))
