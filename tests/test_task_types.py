"""Task types beyond classification: multiple choice joins by one YAML file, learns, reads the local
HellaSwag and Cosmos QA copies with their held-out dev slices, and names bad rows in one line."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoTokenizer

from xstilts.cli import main
from xstilts.config import parse_config
from xstilts.errors import XstiltsError
from xstilts.features import Features, collate
from xstilts.model import HeadSpec, MultiHeadModel, load_encoder, load_trained, read_heads
from xstilts.pipeline import run
from xstilts.report import write_report
from xstilts.study import run_study
from xstilts.study_spec import StudySpec
from xstilts.task_types.multiple_choice import TYPE as MULTIPLE_CHOICE
from xstilts.tasks import load_registry
from xstilts.task_types import read_split
from helpers import learning_run, one_line_error, tiny_study

WORDS = "apple river stone cloud green table music winter paper light".split()


def _choice_rows(count: int, seed: int) -> str:
    """Three candidates of random words; the right one (at a random place) contains 'positive', the others
    'negative'."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        answer = rng.randrange(3)
        choices = [" ".join(rng.sample(WORDS, 3) + ["positive" if i == answer else "negative"]) for i in range(3)]
        rows.append(json.dumps({"story": " ".join(rng.sample(WORDS, 5)), "options": choices, "answer": answer}))
    return "\n".join(rows) + "\n"


def _choice_task(root: Path, yaml_text: str | None = None) -> tuple[Path, Path]:
    tasks, data = root / "tasks", root / "data"
    tasks.mkdir(parents=True)
    data.mkdir()
    (tasks / "pick.yaml").write_text(yaml_text or (
        "name: pick\ntype: multiple_choice\nchoices: 3\n"
        "local: {format: jsonl, files: {train: train.jsonl, dev: dev.jsonl},\n"
        "        columns: {context: story, choices: options, label: answer}}\n"))
    (data / "train.jsonl").write_text(_choice_rows(128, 1))
    (data / "dev.jsonl").write_text(_choice_rows(60, 2))
    return tasks, data


def test_a_multiple_choice_task_joins_by_one_yaml_and_is_learned(tmp_path, tiny_model_dir):
    tasks, data = _choice_task(tmp_path)
    config = parse_config(learning_run(tiny_model_dir, data, tasks, "pick"), "test")
    metrics = run(config, tmp_path / "run")
    assert metrics["target"]["metrics"]["history"][-1]["score"] >= 0.95
    assert metrics["evaluation"]["pick"]["dev"]["en"] >= 0.95
    assert read_heads(tmp_path / "run" / "target") == {"pick": HeadSpec("multiple_choice")}
    # the dev loss over the candidates: about ln 3 with a fresh head, far below once trained
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = load_registry([tasks]).get("pick")
    dev = MULTIPLE_CHOICE.featurize(read_split(spec, "dev", "en", data).examples, tokenizer, 64, spec, "en")
    assert dev.choices == 3 and len(dev.input_ids) == 3 * len(dev)
    torch.manual_seed(0)
    untrained = MultiHeadModel(load_encoder(str(tiny_model_dir)), {"pick": HeadSpec("multiple_choice")})
    trained = load_trained(str(tiny_model_dir), tmp_path / "run" / "target")
    before, after = (_dev_loss(model, dev, tokenizer.pad_token_id) for model in (untrained, trained))
    assert abs(before - math.log(3)) < 0.1 and after < 0.3 * before, (before, after)


def _dev_loss(model: MultiHeadModel, dev: Features, pad_id: int) -> float:
    batch = collate(dev, np.arange(len(dev)), pad_id)
    labels = batch.pop("labels")
    model.eval()
    with torch.no_grad():
        return float(MULTIPLE_CHOICE.loss(model("pick", choices=dev.choices, **batch), labels)) / len(dev)


def test_local_hellaswag_and_cosmosqa_hold_out_a_dev_slice(shared_data_dir):
    registry = load_registry()
    for task, train, dev in [("hellaswag", 9042, 1000), ("cosmosqa", 2485, 500)]:
        spec = registry.get(task)
        rows = {split: read_split(spec, split, "en", shared_data_dir).examples for split in ("train", "dev")}
        assert (len(rows["train"]), len(rows["dev"])) == (train, dev)
        assert all(len(e.choices) == 4 and 0 <= e.label < 4 for split in rows.values() for e in split)
    first = read_split(registry.get("hellaswag"), "train", "en", shared_data_dir).examples[0]
    assert first.text_a == "Roof shingle removal: A man is sitting on a roof. he"
    assert first.label == 3 and first.choices[3] == "starts pulling up roofing on a roof."
    cosmos = read_split(registry.get("cosmosqa"), "dev", "en", shared_data_dir).examples[0]
    assert cosmos.text_a.endswith("?")  # the question follows the context


@pytest.mark.parametrize("rows, problem", [
    ('{"story": "a b", "options": ["x", "y"], "answer": 0}\n', "dev.jsonl:1: 2 candidates, the task has 3"),
    ('{"story": "a b", "options": ["x", "y", "z"], "answer": 0}\n{"story": "c", "options": ["x", "y", "z"], "answer": 3}\n',
     "dev.jsonl:2: label '3' is not a candidate index 0-2"),
    ('{"story": "a b", "options": "x y z", "answer": 0}\n', "dev.jsonl:1: field 'choices' holds str, not a list"),
])
def test_bad_multiple_choice_rows_are_one_line_naming_file_and_row(tmp_path, rows, problem):
    tasks, data = _choice_task(tmp_path)
    (data / "dev.jsonl").write_text(rows)
    with pytest.raises(XstiltsError) as error:
        read_split(load_registry([tasks]).get("pick"), "dev", "en", data)
    one_line_error(error, problem)


def test_a_multiple_choice_task_without_its_fields_is_refused(tmp_path):
    tasks, _ = _choice_task(tmp_path, "name: pick\ntype: multiple_choice\nchoices: 3\n"
                                      "local: {format: jsonl, files: {dev: dev.jsonl}, columns: {text_a: story, label: answer}}\n")
    with pytest.raises(XstiltsError) as error:
        load_registry([tasks]).get("pick")
    one_line_error(error, "pick.yaml", "columns must map at least `context`, `choices` and `label`")


def test_a_study_with_multiple_choice_arms_and_tatoeba_runs_to_its_report(tiny_model_dir, shared_data_dir, tmp_path):
    """hellaswag and cosmosqa arms beside snli and indonli, target MNLI, evaluated on XNLI and on Tatoeba; the
    base model is scored on Tatoeba once, and the report shows every evaluation."""
    arms = [{"name": name, "group": group, "tasks": [{"task": name}], "cap": 32}
            for name, group in [("hellaswag", "english"), ("cosmosqa", "english"), ("snli", "english"),
                                ("indonli", "low-resource")]]
    spec = tiny_study(tiny_model_dir, shared_data_dir, arms)
    spec["seeds"] = [1, 2]
    spec["evaluate"].append({"task": "tatoeba", "split": "test", "languages": ["swh", "deu"], "max_examples": 50})
    run_study(StudySpec(**spec), tmp_path)
    results = pd.read_csv(tmp_path / "results.csv")
    assert set(results["task"]) == {"xnli", "tatoeba"}
    assert len(results[results["task"] == "tatoeba"]) == 5 * 2 * 2  # arms incl. baseline x seeds x languages
    base = pd.read_csv(tmp_path / "base_model.csv")
    assert base[["task", "language", "n"]].values.tolist() == [["tatoeba", "swh", 50], ["tatoeba", "deu", 50]]
    assert (base["metric"] == "accuracy").all() and ((base["score"] >= 0) & (base["score"] <= 1)).all()
    heads = read_heads(next(p.parent for p in (tmp_path / "nodes").glob("intermediate-*/heads.json")
                            if "hellaswag" in p.read_text() or "cosmosqa" in p.read_text()))
    assert {spec.type for spec in heads.values()} == {"multiple_choice"}
    report = (Path(write_report(tmp_path))).read_text()
    for heading in ("## Results: xnli dev", "## Results: tatoeba test", "## Base model (no training)"):
        assert heading in report
    assert json.loads((tmp_path / "report" / "report.json").read_text())["base_model"]["tatoeba/test"]["swh"] == \
        base["score"][0]


def _retrieval_task(root: Path, english: list[str], sentences: list[str]) -> tuple[Path, Path]:
    tasks, data = root / "tasks", root / "data"
    tasks.mkdir(parents=True)
    data.mkdir()
    (tasks / "pairs.yaml").write_text(
        "name: pairs\ntype: retrieval\nlanguages: [xx]\n"
        "local: {format: text, files: {test: 'pairs.{language}'}, aligned_files: {test: pairs.eng},\n"
        "        columns: {text_a: 0, text_b: 1}}\n")
    (data / "pairs.xx").write_text("\n".join(sentences) + "\n")
    (data / "pairs.eng").write_text("\n".join(english) + "\n")
    return tasks, data


@pytest.mark.parametrize("shift, expected", [(0, 1.0), (1, 0.0)])
def test_retrieval_finds_planted_translations(tmp_path, tiny_model_dir, shift, expected, monkeypatch):
    """Planted truth: each 'translation' is the sentence itself, so nearest neighbours match exactly (1.0);
    with the English file rotated by one line every match lands on the neighbouring row (0.0)."""
    sentences = [" ".join(random.Random(i).sample(WORDS, 4)) for i in range(40)]
    tasks, data = _retrieval_task(tmp_path, sentences[shift:] + sentences[:shift], sentences)
    monkeypatch.setenv("XSTILTS_TASK_DIRS", str(tasks))
    assert main(["evaluate", str(tiny_model_dir), "--task", "pairs", "--output", str(tmp_path / "out"),
                 "--data-dir", str(data)]) == 0
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["languages"]["xx"] == {"metric": "accuracy", "score": expected, "scores": {"accuracy": expected},
                                         "n": 40}
    predictions = pd.read_csv(tmp_path / "out" / "predictions" / "xx.csv")
    assert (predictions["prediction"] == (predictions["label"] - shift) % 40).all()


def test_an_aligned_file_of_another_length_is_one_line(tmp_path):
    tasks, data = _retrieval_task(tmp_path, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(XstiltsError) as error:
        read_split(load_registry([tasks]).get("pairs"), "test", "xx", data)
    one_line_error(error, "pairs.xx: 3 rows, but its aligned file", "pairs.eng has 2")


def test_a_retrieval_task_cannot_be_trained(tmp_path, tiny_model_dir, shared_data_dir):
    config = parse_config({"model": str(tiny_model_dir), "data_dir": str(shared_data_dir), "max_length": 64,
                           "target": {"task": {"task": "tatoeba", "split": "test"}, "train": {"max_steps": 1}},
                           "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en"], "max_examples": 10}]},
                          "test")
    with pytest.raises(XstiltsError) as error:
        run(config, tmp_path / "run")
    one_line_error(error, "task 'tatoeba' is a retrieval task: it has no training data")


def test_the_tasks_command_lists_built_in_and_user_tasks(tmp_path, shared_data_dir, capsys):
    tasks, _ = _choice_task(tmp_path)
    assert main(["tasks", "--task-dir", str(tasks), "--data-dir", str(shared_data_dir)]) == 0
    rows = {line.split(" | ")[0].strip("| "): line for line in capsys.readouterr().out.splitlines()}
    assert "| multiple_choice | accuracy | en | train dev | local, hub:Rowan/hellaswag |" in rows["hellaswag"]
    assert "| retrieval | accuracy | 36: afr ara ben bul cmn deu ... | test | local |" in rows["tatoeba"]
    # the user's task, its files not in this data folder
    assert rows["pick"] == "| pick | multiple_choice | accuracy | en | train dev | local (2 file(s) missing) |"


def test_a_rows_slice_keeps_labels_from_aligned_by_file_row(tmp_path):
    """`rows` takes records 1-2 of the file; their labels come from rows 1-2 of the labels file, not 0-1."""
    tasks, data = tmp_path / "tasks", tmp_path / "data"
    tasks.mkdir()
    data.mkdir()
    (tasks / "sliced.yaml").write_text(
        "name: sliced\nlabels: [a, b, c]\n"
        "local: {format: tsv, header: false, files: {dev: x.tsv}, rows: {dev: '1:3'}, columns: {text_a: 0},\n"
        "        labels_from: {file: y.tsv, column: 0}}\n")
    (data / "x.tsv").write_text("s0\ns1\ns2\ns3\n")
    (data / "y.tsv").write_text("a\nb\nc\na\n")
    examples = read_split(load_registry([tasks]).get("sliced"), "dev", "en", data).examples
    assert [(e.text_a, e.label) for e in examples] == [("s1", 1), ("s2", 2)]


def test_slurm_values_stay_as_written_unless_numbers():
    from xstilts.cli import _key_value

    assert _key_value("slurm_time=2:00:00") == ("slurm_time", "2:00:00")
    assert _key_value("cpus_per_task=8") == ("cpus_per_task", 8)
    assert _key_value("mem_gb=7.5") == ("mem_gb", 7.5)
    assert _key_value("slurm_partition=on") == ("slurm_partition", "on")
