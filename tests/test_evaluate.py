"""`xstilts evaluate`: a finished run or study scored on a new evaluation set, with no training phase started."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from safetensors.torch import load_file, save_file

from xstilts.cli import main
from xstilts.config import load_config, parse_config
from xstilts.errors import XstiltsError
from xstilts.pipeline import run
from xstilts.summaries import evaluation_summary, format_table
from xstilts.study import run_study
from xstilts.study_spec import StudySpec
from helpers import one_line_error, tiny_run


def _done_marks(root: Path) -> dict[str, int]:
    """Every phase's DONE marker and its modification time: training phases must keep theirs."""
    return {str(path.relative_to(root)): path.stat().st_mtime_ns for path in root.rglob("DONE")}


def test_a_run_that_failed_in_training_reruns_once_corrected(tmp_path, tiny_model_dir, shared_data_dir):
    """A run is a one-cell study: the corrected config recomputes only what changed (here the target phase,
    after an intermediate phase that had finished), with no claim of the old config on the folder."""
    config = tiny_run(tiny_model_dir, shared_data_dir)
    config["intermediate"] = {"tasks": [{"task": "sib200", "languages": ["swh_Latn"], "max_examples": 16}],
                              "train": {"max_steps": 1, "batch_size": 8}}
    config["target"].update(carry="encoder_and_head", carry_head="sib200")
    output = tmp_path / "run"
    with pytest.raises(XstiltsError, match="carry_head 'sib200'"):  # 7 topic labels cannot carry into NLI
        run(parse_config(config, "test"), output)
    intermediate = _done_marks(output)
    assert len(intermediate) == 1 and not (output / "target").exists()
    config["target"]["carry"], config["target"]["carry_head"] = "encoder", None
    metrics = run(parse_config(config, "test"), output)
    assert {key: _done_marks(output)[key] for key in intermediate} == intermediate  # not trained again
    assert (output / "intermediate" / "DONE").resolve() == (output / next(iter(intermediate))).resolve()
    assert metrics["evaluation"]["xnli"]["dev"]["n"] == {"en": 10} and (output / "target" / "DONE").is_file()
    assert load_config(output / "config.yaml").target.carry == "encoder"


def test_a_finished_run_gains_an_evaluation_without_training(tmp_path, tiny_model_dir, shared_data_dir, capsys):
    output = tmp_path / "run"
    run(parse_config(tiny_run(tiny_model_dir, shared_data_dir), "test"), output)
    before = _done_marks(output)
    capsys.readouterr()
    assert main(["evaluate", str(output), "--task", "americasnli", "--split", "dev", "--languages", "aym",
                 "--max-examples", "12"]) == 0
    after = _done_marks(output)
    assert {key: after[key] for key in before} == before  # no phase was trained or scored again
    added_done, = set(after) - set(before)  # one new node, which the run's phase folder links to
    assert (output / "eval-americasnli-dev" / "DONE").resolve() == (output / added_done).resolve()
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
    assert err.count("\n") == 1 and "holds an evaluation of xnli/dev (sw n=8) for another request" in err


def test_an_evaluation_output_is_reused_only_for_the_whole_request_it_holds(tmp_path, tiny_model_dir, shared_data_dir,
                                                                          capsys):
    """Another model (other weights), or the whole set after a capped one, is not answered with the cached result."""
    config = {"model": str(tiny_model_dir), "data_dir": str(shared_data_dir), "precision": "fp32", "max_length": 32,
              "target": {"task": {"task": "mnli", "split": "dev", "max_examples": 16},
                         "train": {"max_steps": 1, "batch_size": 8}},
              "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en"], "max_examples": 4}]}
    run(parse_config(config, "test"), tmp_path / "run")
    other = tmp_path / "other-model"
    shutil.copytree(tmp_path / "run" / "target", other)
    weights = load_file(other / "model.safetensors")
    save_file({name: tensor + 1 if tensor.is_floating_point() else tensor for name, tensor in weights.items()},
              other / "model.safetensors")
    scored = tmp_path / "scored"

    def evaluate(model: Path, *cap: str) -> int:
        return main(["evaluate", str(model), "--task", "xnli", "--split", "dev", "--languages", "sw", *cap, "--output",
                     str(scored), "--model", str(tiny_model_dir), "--data-dir", str(shared_data_dir)])

    assert evaluate(tmp_path / "run" / "target", "--max-examples", "8") == 0
    assert json.loads((scored / "result.json").read_text())["request"]["max_examples"] == 8
    assert evaluate(tmp_path / "run" / "target", "--max-examples", "8") == 0  # the same request: reused
    capsys.readouterr()
    for model, cap in [(other, ["--max-examples", "8"]), (tmp_path / "run" / "target", [])]:
        assert evaluate(model, *cap) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{scored}: holds an evaluation of xnli/dev (sw n=8) for another request" in err


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
