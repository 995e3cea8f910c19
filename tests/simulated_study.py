"""Simulated studies with planted truth, as the report's `Results` (in memory, no files).

Each run (arm x seed) answers each test item correctly with probability
    p = item difficulty (shared by all languages of a parallel item, plus a little per language)
      + the arm's planted effect + the arm's per-item effect (heterogeneous across items, mean 0)
      + a seed effect shared by all arms + a run effect (training noise, `run_std` per run),
then a Bernoulli draw: the dominant noises of real fine-tuning studies (seed variance, parallel items).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from xstilts.report.results import Results

XNLI = ["en", "fr", "es", "de", "el", "bg", "ru", "tr", "ar", "vi", "th", "zh", "hi", "sw", "ur"]


@dataclass(frozen=True)
class Design:
    """Arms as (name, group, planted effect in accuracy); the baseline is added first with effect 0."""

    arms: tuple[tuple[str, str, float], ...] = (("snli", "english", 0.0), ("qqp", "english", 0.0),
                                                ("indonli", "low-resource", 0.0), ("klue-nli", "low-resource", 0.0))
    seeds: int = 4
    items: int = 200
    languages: tuple[str, ...] = tuple(XNLI)
    parallel: bool = True  # the languages share their items (as XNLI's translations do)
    run_std: float = 0.011  # training noise of one run's accuracy (measured on the quick study: ~1.1 points)
    seed_std: float = 0.01  # what a seed does to every arm alike
    item_effect_std: float = 0.05  # how much an arm's effect differs between items


def simulate(design: Design, rng: np.random.Generator) -> Results:
    """One simulated study."""
    arms = (("baseline", "baseline", 0.0), *design.arms)
    n_languages = len(design.languages)
    difficulty = rng.uniform(0.2, 0.8, design.items)
    if design.parallel:
        base = difficulty[None, :] + rng.normal(0, 0.05, (n_languages, design.items))
    else:
        base = rng.uniform(0.2, 0.8, (n_languages, design.items))
    seed_effect = rng.normal(0, design.seed_std, design.seeds)
    rows, item_scores = [], []
    for arm, group, effect in arms:
        item_effect = 0.0 if group == "baseline" else rng.normal(0, design.item_effect_std, design.items)
        if not design.parallel and group != "baseline":
            item_effect = rng.normal(0, design.item_effect_std, (n_languages, design.items))
        for seed in range(design.seeds):
            p = np.clip(base + item_effect + effect + seed_effect[seed] + rng.normal(0, design.run_std), 0, 1)
            draws = (rng.random(p.shape) < p).astype(float)
            for language, values in zip(design.languages, draws):
                rows.append({"arm": arm, "group": group, "arm_languages": "", "size_matched": True,
                             "intermediate_examples": 1000, "intermediate_pieces": 0 if group == "baseline" else 30_000,
                             "seed": seed + 1, "task": "xnli", "split": "test", "language": language,
                             "metric": "accuracy", "score": values.mean(), "n": design.items,
                             "parallel": design.parallel})
                item_scores.append(values)
    table = pd.DataFrame(rows)
    table["item_scores"] = pd.Series(item_scores, dtype=object)
    return Results(Path("simulated"), table)
