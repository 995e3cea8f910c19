"""Span QA: SQuAD JSON joins by one YAML file and is learned; long contexts become overlapping windows whose
targets and predictions map back to the answer text; bad rows stop in one line; the local TyDiQA and XQuAD
copies read through the built-in tasks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from xstilts.errors import XstiltsError
from xstilts.model import HeadSpec, read_heads
from xstilts.config import parse_config
from xstilts.pipeline import run
from xstilts.task_types.span_qa import N_BEST, TYPE as SPAN_QA
from xstilts.tasks import load_registry
from xstilts.task_types import read_split
from helpers import learning_run, one_line_error

WORDS = "apple river stone cloud green table music winter paper light".split()
TASK_YAML = ("name: find\ntype: span_qa\nmax_length: 64\ndoc_stride: 16\n"
             "local: {format: squad, files: {train: train.json, dev: dev.json},\n"
             "        columns: {id: id, context: context, question: question, answer_text: answers.text,\n"
             "                  answer_start: answers.answer_start}}\n")


def _squad(questions: list[tuple[str, str, list[tuple[str, int]]]]) -> dict:
    """SQuAD v1.1 JSON: one paragraph per (context, question, answers)."""
    return {"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": [{"id": f"q{i}", "question": question,
                                      "answers": [{"text": text, "answer_start": start} for text, start in answers]}]}
        for i, (context, question, answers) in enumerate(questions)]}]}


def _find_rows(count: int, seed: int, length: int = 12) -> dict:
    """Contexts of random words with the answer 'positive' somewhere in them."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(length)]
        words.insert(rng.randrange(length), "positive")
        context = " ".join(words)
        rows.append((context, "which word?", [("positive", context.index("positive"))]))
    return _squad(rows)


def _task(root: Path, train: dict, dev: dict, yaml_text: str = TASK_YAML) -> tuple[Path, Path]:
    tasks, data = root / "tasks", root / "data"
    tasks.mkdir(parents=True)
    data.mkdir()
    (tasks / "find.yaml").write_text(yaml_text)
    (data / "train.json").write_text(json.dumps(train))
    (data / "dev.json").write_text(json.dumps(dev))
    return tasks, data


def test_a_span_qa_task_joins_by_one_yaml_and_is_learned(tmp_path, tiny_model_dir):
    tasks, data = _task(tmp_path, _find_rows(128, 1), _find_rows(40, 2))
    metrics = run(parse_config(learning_run(tiny_model_dir, data, tasks, "find"), "test"), tmp_path / "run")
    assert read_heads(tmp_path / "run" / "target") == {"find": HeadSpec("span_qa")}
    assert metrics["evaluation"]["find"]["dev"]["en"] >= 0.9  # F1: a fresh head scores about 0.1
    rows = (tmp_path / "run" / "eval-find-dev" / "predictions" / "en.csv").read_text().splitlines()
    assert rows[0] == "index,id,answers,prediction,exact_match,f1" and len(rows) == 41


def test_long_contexts_become_overlapping_windows_that_map_back_to_the_answer(tmp_path, tiny_model_dir):
    tasks, data = _task(tmp_path, _find_rows(4, 1, length=150), _find_rows(4, 2))
    spec = load_registry([tasks]).get("find")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    examples = read_split(spec, "train", "en", data).examples
    features = SPAN_QA.featurize(examples, tokenizer, 64, spec, "en")
    assert len(features) > 3 * len(examples) and max(features.lengths) <= 64
    for question in range(len(examples)):
        windows = np.flatnonzero(features.spans.question == question)
        targets = features.labels[windows]
        assert (targets[:, 0] > 0).sum() >= 1  # the answer is inside at least one window ...
        for window, (start, end) in zip(windows, targets):
            offsets = features.spans.offsets[window]
            if start:  # ... and its target pieces spell it
                assert examples[question].text_b[offsets[start][0]:offsets[end][1]] == "positive"
    # predictions: a window that scores the answer highest wins over the others of its question
    predictions = np.full((len(features), 4, N_BEST), -1.0)
    predictions[:, 1] = predictions[:, 3] = -100.0
    for window, (start, end) in enumerate(features.labels):
        first = 1 + int(np.flatnonzero(features.spans.offsets[window][:, 0] >= 0)[0])
        chosen = (start, end, 5.0) if start else (first, first, 1.0)  # elsewhere: a context piece, lower score
        predictions[window, :, 0] = [chosen[0], chosen[2], chosen[1], chosen[2]]
    outcomes = SPAN_QA.outcomes(predictions, features, None)
    assert [row["prediction"] for row in outcomes] == ["positive"] * len(examples)
    assert all(row["exact_match"] == row["f1"] == 1.0 for row in outcomes)


@pytest.mark.parametrize("change, problem", [
    (lambda q: q["answers"][0].update(answer_start=3), "is not at its offset 3"),
    (lambda q: q.update(answers=[]), "no gold answer"),
    (lambda q: q.pop("question"), "not SQuAD v1.1 JSON"),
    (lambda q: q["answers"][0].update(text=" ", answer_start=5), "an empty gold answer"),
])
def test_bad_span_qa_rows_stop_in_one_line_naming_file_and_question(tmp_path, change, problem):
    train = _find_rows(5, 1)
    change(train["data"][0]["paragraphs"][3]["qas"][0])
    tasks, data = _task(tmp_path, train, _find_rows(4, 2))
    with pytest.raises(XstiltsError) as excinfo:
        read_split(load_registry([tasks]).get("find"), "train", "en", data)
    one_line_error(excinfo, str(data / "train.json"), "4", problem)


def test_an_empty_context_stops_in_one_line(tmp_path):
    train = _find_rows(3, 1)
    train["data"][0]["paragraphs"][1]["context"] = "  "
    tasks, data = _task(tmp_path, train, _find_rows(4, 2))
    with pytest.raises(XstiltsError) as excinfo:
        read_split(load_registry([tasks]).get("find"), "train", "en", data)
    one_line_error(excinfo, str(data / "train.json") + ":2", "q1", "empty context")


@pytest.mark.parametrize("task, split, language, questions", [
    ("tydiqa", "train", "sw", 2755), ("tydiqa", "dev", "te", 669), ("xquad", "test", "zh", 1190)])
def test_the_local_tydiqa_and_xquad_copies_read_with_gold_answers(shared_data_dir, task, split, language, questions):
    data = read_split(load_registry().get(task), split, language, shared_data_dir)
    assert len(data.examples) == questions
    assert all(e.answers and e.text_b[s:s + len(t)] == t for e in data.examples for t, s in e.answers)


def test_a_question_too_long_for_its_windows_stops_in_one_line(tmp_path, tiny_model_dir):
    rows = _find_rows(3, 1)
    rows["data"][0]["paragraphs"][2]["qas"][0]["question"] = " ".join(WORDS * 8)
    tasks, data = _task(tmp_path, rows, _find_rows(4, 2))
    spec = load_registry([tasks]).get("find")
    with pytest.raises(XstiltsError) as excinfo:
        SPAN_QA.featurize(read_split(spec, "train", "en", data).examples, AutoTokenizer.from_pretrained(tiny_model_dir),
                          64, spec, "en")
    one_line_error(excinfo, "'q2'", "leaves no room for its context", "raise the task's max_length")
