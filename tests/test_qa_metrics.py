"""Exact match and F1 agree with the official SQuAD v1.1 evaluation script on real predictions, and MLQA's
language-aware normalisation handles what whitespace tokens cannot (Chinese) and other languages' articles.

`fixtures/squad_v1_official.json` holds predictions of a real model (xstilts' `configs/tydiqa-en.yaml` run,
on TyDiQA-GoldP English dev and XQuAD English), plus variants of some of them that add an article, punctuation
or a neighbouring word, keyed by question id, and the per-question exact match and F1 that the official
`evaluate-v1.1.py` gave for them (its `exact_match_score` / `f1_score` / `metric_max_over_ground_truths`, run
outside this repository on the same files). The gold answers are read here from ../shared/data.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from xstilts import qa_metrics
from xstilts.tasks import load_registry
from xstilts.task_types import read_split

FIXTURE = Path(__file__).parent / "fixtures" / "squad_v1_official.json"


def test_exact_match_and_f1_equal_the_official_squad_script_on_real_predictions(shared_data_dir):
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    gold = {}
    for task, split in (("tydiqa", "dev"), ("xquad", "test")):
        for example in read_split(load_registry().get(task), split, "en", shared_data_dir).examples:
            gold[example.key] = [text for text, _ in example.answers]
    cases = fixture["cases"]
    assert len(cases) >= 200 and sum(len(gold[c["id"]]) > 1 for c in cases) >= 50  # several gold answers
    for case in cases:
        answers = gold[case["id"]]
        assert qa_metrics.exact_match(case["prediction"], answers) == case["official_exact_match"], case
        assert qa_metrics.f1(case["prediction"], answers) == pytest.approx(case["official_f1"], abs=1e-12), case
    # the official script's totals (percent over the cases)
    f1 = 100 * sum(qa_metrics.f1(c["prediction"], gold[c["id"]]) for c in cases) / len(cases)
    assert f1 == pytest.approx(fixture["official_total"]["f1"], abs=1e-9)
    # the variants matter: articles and punctuation are removed, neighbouring words are not
    assert {c["variant"] for c in cases} >= {"model", "article", "punctuation", "neighbour"}


@pytest.mark.parametrize("prediction, gold, squad, mlqa", [
    ("北京", ["北京大学"], 0.0, 2 / 3),  # Chinese: one whitespace token vs characters
    ("北京大学。", ["北京大学"], 0.0, 1.0),  # '。' is not ASCII punctuation: SQuAD's normalisation keeps it
    ("der Hund", ["Hund"], 2 / 3, 1.0),  # a German article
    ("«Hund»", ["Hund"], 0.0, 1.0),  # Unicode punctuation
])
def test_mlqa_normalisation_is_language_aware(prediction, gold, squad, mlqa):
    language = "zh" if any("\u4e00" <= c <= "\u9fa5" for c in prediction) else "de"
    assert qa_metrics.f1(prediction, gold, "squad", language) == pytest.approx(squad)
    assert qa_metrics.f1(prediction, gold, "mlqa", language) == pytest.approx(mlqa)
