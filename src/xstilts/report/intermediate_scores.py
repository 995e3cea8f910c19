"""The intermediate models' own scores (`intermediate_evaluate`: each arm's intermediate model scored with
its task's head, e.g. SIB-200 in every intermediate language), from the study's intermediate.csv, as one
table per evaluation (arms x languages, the mean over seeds) and as JSON."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xstilts.report.formatting import metric_name, points
from xstilts.report.render import Block, Heading, Table

INTERMEDIATE_FILE = "intermediate.csv"


def load_intermediate_scores(study_dir: Path) -> pd.DataFrame | None:
    """Rows arm, group, seed, task, split, language, metric, score, n; None when the study has none."""
    path = study_dir / INTERMEDIATE_FILE
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else None


def _means(rows: pd.DataFrame) -> pd.DataFrame:
    """Arms x languages (and their average): the score's mean over seeds."""
    table = rows.pivot_table(index="arm", columns="language", values="score", aggfunc="mean", sort=False)
    table["average"] = table.mean(axis=1)
    return table


def intermediate_blocks(scores: pd.DataFrame | None) -> list[Block]:
    """A heading and, per evaluation, a table of the arms' intermediate models by language."""
    if scores is None:
        return []
    blocks: list[Block] = [Heading("Intermediate models on their own task")]
    for (task, split), rows in scores.groupby(["task", "split"], sort=False):
        table = _means(rows)
        seeds = rows.groupby("arm")["seed"].nunique()
        blocks.append(Table(
            ["arm", "seeds", *table.columns],
            [[arm, str(seeds[arm]), *(points(v, False) for v in values)] for arm, values in table.iterrows()],
            f"{task} {split}, {metric_name(rows['metric'].iloc[0])}: each arm's intermediate model, before the "
            "target phase, scored with its own head (the mean over seeds). It says how well the intermediate "
            "task was learned in each language, not what it did to the target.", numeric=True))
    return blocks


def intermediate_json(scores: pd.DataFrame | None) -> dict:
    """Per evaluation: its metric and, per arm, the mean score per language and their average."""
    if scores is None:
        return {}
    return {f"{task}/{split}": {"metric": rows["metric"].iloc[0],
                                "arms": {arm: values.to_dict() for arm, values in _means(rows).iterrows()}}
            for (task, split), rows in scores.groupby(["task", "split"], sort=False)}
