"""`xstilts evaluate`: a finished run or study scored on a new evaluation set, with no training phase started."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from xstilts.cli import main
from xstilts.config import load_config, parse_config
from xstilts.errors import XstiltsError
from xstilts.pipeline import evaluation_summary, format_table, run
from xstilts.study import run_study
from xstilts.study_spec import StudySpec
from helpers import one_line_error


def _done_marks(root: Path) -> dict[str, int]:
    """Every phase's DONE marker and its modification time: training phases must keep theirs."""
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("DONE")}


def test_a_finished_run_gains_an_evaluation_without_training(tmp_path, tiny_model_dir, shared_data_dir, capsys):
    config = {"model": str(tiny_model_dir), "data_dir": str(shared_data_dir), "precision": "fp32", "max_length": 32,
              "target": {"task": {"task": "mnli", "split": "dev", "max_examples": 16},
                         "train": {"max_steps": 1, "batch_size": 8}},
              "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en"], "max_examples": 10}]}
    output = tmp_path / "run"
    run(parse_config(config, "test"), output)
    before = _done_marks(output)
    capsys.readouterr()
    assert main(["evaluate", str(output), "--task", "americasnli", "--split", "dev", "--languages", "aym",
                 "--max-examples", "12"]) == 0
    after = _done_marks(output)
    assert {key: after[key] for key in before} == before  # no phase was trained or scored again
    assert set(after) - set(before) == {"eval-americasnli-dev/DONE"}
    printed = capsys.readouterr()
    assert "training" not in printed.err.lower()
    metrics = json.loads((output / "metrics.json").read_text())["evaluation"]
    added = metrics["americasnli"]["dev"]
    assert added["n"] == {"aym": 12} and "xnli" in metrics
    assert added["metric"] == "accuracy" and added["scores"] == {"aym": {"accuracy": added["aym"]}}
    assert f"| accuracy | {100 * added['aym']:.1f} | {100 * added['average']:.1f} |" in printed.out
    # the run directory's config now lists the evaluation, so running it again reuses everything
    assert [e.task for e in load_config(output / "config.yaml").evaluate] == ["xnli", "americasnli"]
    run(load_config(output / "config.yaml"), output)
    assert _done_marks(output) == after
    # a trained model directory on its own (here the run's target phase), scored into --output
    scored = tmp_path / "scored"
    assert main(["evaluate", str(output / "target"), "--task", "xnli", "--split", "dev", "--languages", "sw",
                 "--max-examples", "8", "--output", str(scored), "--model", str(tiny_model_dir),
                 "--data-dir", str(shared_data_dir)]) == 0
    assert json.loads((scored / "result.json").read_text())["languages"]["sw"]["n"] == 8
    assert len(pd.read_csv(scored / "predictions" / "sw.csv")) == 8
    assert _done_marks(output) == after
    # the same --output asked for another split is refused, not answered with the cached result
    capsys.readouterr()
    assert main(["evaluate", str(output / "target"), "--task", "xnli", "--split", "test", "--languages", "sw",
                 "--max-examples", "8", "--output", str(scored), "--model", str(tiny_model_dir),
                 "--data-dir", str(shared_data_dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds an evaluation of xnli/dev (sw n=8); give another --output" in err


def test_a_study_gains_an_evaluation_for_every_arm_and_seed(tmp_path, tiny_model_dir, shared_data_dir):
    spec = {"name": "tiny", "model": str(tiny_model_dir), "data_dir": str(shared_data_dir), "max_length": 64,
            "seeds": [3, 4], "intermediate_train": {"max_steps": 2, "batch_size": 8},
            "target": {"task": {"task": "mnli", "max_examples": 48}, "train": {"max_steps": 2, "batch_size": 8}},
            "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en"], "max_examples": 20}],
            "arms": [{"name": "snli", "group": "english", "tasks": [{"task": "snli"}], "cap": 32}]}
    study_dir = tmp_path / "study"
    run_study(StudySpec(**spec), study_dir)
    trained = {key: value for key, value in _done_marks(study_dir).items() if not key.startswith("nodes/eval-")}
    assert main(["evaluate", str(study_dir), "--task", "americasnli", "--split", "dev", "--languages", "aym", "gn",
                 "--max-examples", "15"]) == 0
    after = _done_marks(study_dir)
    assert {key: after[key] for key in trained} == trained  # no training node ran again
    results = pd.read_csv(study_dir / "results.csv")
    added = results[results.task == "americasnli"]
    assert sorted(zip(added.arm, added.seed, added.language)) == sorted(
        (arm, seed, language) for arm in ("baseline", "snli") for seed in (3, 4) for language in ("aym", "gn"))
    assert (added.n == 15).all()
    assert "americasnli" in yaml.safe_dump(json.loads((study_dir / "study.json").read_text()))
    assert main(["report", str(study_dir)]) == 0
    assert "americasnli dev" in (study_dir / "report" / "report.md").read_text()


def test_the_printed_table_names_every_metric_primary_first():
    """An evaluation scored by F1 and exact match (span QA): metrics.json keeps the primary metric per language
    and every metric under `scores`; the table has a row per metric, named."""
    languages = {"de": {"metric": "f1", "score": 0.5, "scores": {"f1": 0.5, "exact_match": 0.25}, "n": 4},
                 "el": {"metric": "f1", "score": 0.7, "scores": {"f1": 0.7, "exact_match": 0.5}, "n": 4}}
    result = {"kind": "eval", "task": "xquad", "split": "test", "head": "squad", "metric": "f1",
              "languages": languages, "average": 0.6}
    summary = evaluation_summary(result)
    assert summary == {"split": "test", "metric": "f1", "average": 0.6, "de": 0.5, "el": 0.7,
                       "scores": {"de": {"f1": 0.5, "exact_match": 0.25}, "el": {"f1": 0.7, "exact_match": 0.5}},
                       "n": {"de": 4, "el": 4}}
    assert format_table({"xquad": {"test": summary}}).splitlines() == [
        "| xquad (test) | de | el | avg |", "|---|---|---|---|", "| f1 | 50.0 | 70.0 | 60.0 |",
        "| exact_match | 25.0 | 50.0 | 37.5 |"]


@pytest.mark.parametrize(("content", "message"), [
    ('{"pooling": "max"}', "unknown pooling 'max' (expected one of mean, cls)"),
    ("not json", "not a JSON object with the model's pooling"),
    ("[1, 2]", "not a JSON object with the model's pooling"),
])
def test_a_damaged_or_unknown_pooling_setting_is_one_line(tmp_path, content, message):
    """A model folder's xstilts_model.json is checked: no silent fall-back to mean pooling."""
    from xstilts.model import SETTINGS_FILE, saved_pooling

    (tmp_path / SETTINGS_FILE).write_text(content)
    with pytest.raises(XstiltsError) as excinfo:
        saved_pooling(tmp_path)
    one_line_error(excinfo, str(tmp_path / SETTINGS_FILE), message)
    (tmp_path / SETTINGS_FILE).write_text('{"pooling": "mean"}')
    assert saved_pooling(tmp_path) == "mean"
