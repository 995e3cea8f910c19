"""The base model's own scores (retrieval evaluations such as Tatoeba: no training, no seeds), from the
study's base_model.csv, as one table per evaluation and as JSON."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from xstilts.report.formatting import metric_name, points
from xstilts.report.render import Block, Heading, Table

BASE_MODEL_FILE = "base_model.csv"


def load_base_model(study_dir: Path) -> pd.DataFrame | None:
    """Rows task, split, language, metric, score, n; None when the study has no base-model evaluation."""
    path = study_dir / BASE_MODEL_FILE
    return pd.read_csv(path, keep_default_na=False) if path.is_file() else None


def base_model_blocks(base: pd.DataFrame | None) -> list[Block]:
    """A heading and one table (the evaluation's metric in points per language, and the average) per evaluation."""
    if base is None:
        return []
    blocks: list[Block] = [Heading("Base model (no training)")]
    for (task, split), rows in base.groupby(["task", "split"], sort=False):
        scores = [*rows["score"], rows["score"].mean()]
        blocks.append(Table(["", *rows["language"], "average"],
                            [[metric_name(rows["metric"].iloc[0]), *(points(v, False) for v in scores)]],
                            f"{task} {split}: the base model's encoder, before any training (the arms' results "
                            "above score each arm's final model the same way).", numeric=True))
    return blocks


def base_model_json(base: pd.DataFrame | None) -> dict:
    """Per evaluation: its metric, the score per language and their average."""
    if base is None:
        return {}
    return {f"{task}/{split}": {"metric": rows["metric"].iloc[0], **dict(zip(rows["language"], rows["score"])),
                                "average": rows["score"].mean()}
            for (task, split), rows in base.groupby(["task", "split"], sort=False)}
