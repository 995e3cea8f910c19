"""`xstilts export-predictions`: a run's or a study arm's predictions in XTREME's layout, from predictions files
written by the task types' own `outcomes` (classification, token tagging by word and by sentence, span QA)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from xstilts.cli import main
from xstilts.config import parse_config
from xstilts.errors import XstiltsError
from xstilts.study_spec import StudySpec
from xstilts.task_types.classification import labelled_outcomes
from xstilts.task_types.token_classification import IGNORED, TokenClassification
from xstilts.xtreme_predictions import export_predictions
from helpers import SNLI, one_line_error, tiny_study

NLI = ["entailment", "neutral", "contradiction"]
UPOS = ("ADJ", "DET", "NOUN", "VERB")
NER = ("O", "B-PER", "I-PER", "B-LOC", "I-LOC")
# Two sentences, the second long enough to need two windows: (owner, tagged pieces' labels, predictions).
WINDOWS = [(0, [2, 3, 1], [2, 3, 1]), (1, [0, 2], [0, 2]), (1, [3], [2])]
NER_WINDOWS = [(0, [1, 2, 0], [1, 2, 0]), (1, [0, 3], [3, 4]), (1, [4], [0])]


def _features(windows: list[tuple]) -> tuple[SimpleNamespace, np.ndarray]:
    """Token-classification features (a first-piece label per word, -100 elsewhere) and predictions."""
    labels = np.full((len(windows), 6), IGNORED)
    predictions = np.zeros((len(windows), 6), dtype=int)
    for row, (_, gold, guess) in enumerate(windows):
        labels[row, 1:1 + len(gold)] = gold
        predictions[row, 1:1 + len(guess)] = guess
    return SimpleNamespace(owners=np.array([owner for owner, _, _ in windows]), labels=labels), predictions


def _evaluation(folder: Path, task: str, split: str, outcomes: dict[str, list[dict]], examples: int) -> None:
    """A finished evaluation folder: result.json, DONE and per-language predictions (rows in reverse order)."""
    (folder / "predictions").mkdir(parents=True)
    for language, rows in outcomes.items():
        with open(folder / "predictions" / f"{language}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, list(rows[0]))
            writer.writeheader()
            writer.writerows(reversed(rows))
    languages = {lang: {"metric": "accuracy", "score": 0.5, "scores": {}, "n": len(rows)} for lang, rows in outcomes.items()}
    data = [{"task": task, "split": split, "language": lang, "source": "x", "sha256": "0", "examples": examples,
             "skipped_unlabelled": 0} for lang in outcomes]
    (folder / "result.json").write_text(json.dumps({"kind": "eval", "task": task, "split": split,
                                                    "languages": languages, "data": data}))
    (folder / "DONE").write_text("done")


def _outcomes() -> dict[tuple[str, str], dict[str, list[dict]]]:
    """Per (task, split): per language, the outcomes its type writes."""
    pos, pos_predictions = _features(WINDOWS)
    ner, ner_predictions = _features(NER_WINDOWS)
    qa = [{"index": i, "id": f"q{i}", "answers": "[]", "prediction": text, "exact_match": 0, "f1": 0.0}
          for i, text in enumerate(["in Paris", "1994", "the \"blue\" one"])]
    return {
        ("xnli", "test"): {lang: labelled_outcomes(np.array(predicted), np.zeros(3, dtype=int), NLI)
                           for lang, predicted in (("en", [0, 2, 1]), ("sw", [1, 1, 0]))},
        ("udpos", "test"): {"de": TokenClassification("accuracy", UPOS).outcomes(pos_predictions, pos, list(UPOS))},
        ("panx", "dev"): {"en": TokenClassification("f1", NER).outcomes(ner_predictions, ner, list(NER))},
        ("xquad", "test"): {"en": qa},
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A run directory with four finished evaluations; XNLI's is a subsample of 3 of 5 examples."""
    evaluate = [{"task": "xnli", "split": "test", "max_examples": 3}, {"task": "udpos", "split": "test"},
                {"task": "panx", "split": "dev"}, {"task": "xquad", "split": "test"}]
    config = parse_config({"target": {"task": {"task": "mnli"}}, "evaluate": evaluate}, "test")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text(yaml.safe_dump(config.model_dump()))
    for (task, split), outcomes in _outcomes().items():
        _evaluation(folder / f"eval-{task}-{split}", task, split, outcomes, 5 if task == "xnli" else 2)
    return folder


def test_a_run_is_written_in_xtremes_layout(run_dir: Path, tmp_path: Path, capsys) -> None:
    output = tmp_path / "out"
    assert main(["export-predictions", str(run_dir), "--output", str(output), "--format", "xtreme"]) == 0
    assert (output / "xnli" / "test-en.tsv").read_text() == "entailment\ncontradiction\nneutral\n"  # data order
    assert (output / "xnli" / "test-sw.tsv").read_text().splitlines() == ["neutral", "neutral", "entailment"]
    # a tag per word, a blank line between sentences; the second sentence's words come from two windows
    assert (output / "udpos" / "test-de.tsv").read_text() == "NOUN\nVERB\nDET\n\nADJ\nNOUN\nNOUN\n"
    assert (output / "panx" / "dev-en.tsv").read_text() == "B-PER\nI-PER\nO\n\nB-LOC\nI-LOC\nO\n"
    assert json.loads((output / "xquad" / "test-en.json").read_text()) == {
        "q0": "in Paris", "q1": "1994", "q2": "the \"blue\" one"}
    readme = (output / "README.md").read_text()
    assert "| xnli/test-en.tsv | xnli | test | en | 3 | a subsample of 3 of 5 examples (max_examples) |" in readme
    assert "| udpos/test-de.tsv | udpos | test | de | 6 | no |" in readme
    assert sorted(path.relative_to(output).as_posix() for path in output.rglob("*.*")) == [
        "README.md", "panx/dev-en.tsv", "udpos/test-de.tsv", "xnli/test-en.tsv", "xnli/test-sw.tsv",
        "xquad/test-en.json"]
    captured = capsys.readouterr()
    assert "5 prediction files of 4 task(s)" in captured.out
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "xnli/test" in warning[0] and "udpos" not in warning[0]


def test_bad_requests_are_one_line(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    for output, options, parts in [(tmp_path / "full", {}, ("new or empty",)),
                                   (tmp_path / "o1", {"arm": "snli"}, ("is a run", "--arm"))]:
        with pytest.raises(XstiltsError) as excinfo:
            export_predictions(run_dir, output, **options)
        one_line_error(excinfo, *parts)
    result = run_dir / "eval-xnli-test" / "result.json"
    result.write_text(result.read_text().replace('"sw"', '"../sw"'))
    with pytest.raises(XstiltsError) as excinfo:
        export_predictions(run_dir, tmp_path / "o2")
    one_line_error(excinfo, "'../sw' cannot name a file or folder")


def test_a_study_exports_one_arm_and_seed(tmp_path: Path) -> None:
    """Also from an export's compressed predictions."""
    study = tmp_path / "study"
    spec = StudySpec(**{**tiny_study(Path("model"), Path("data"), [SNLI]), "seeds": [3, 4]})
    (study / "nodes").mkdir(parents=True)
    (study / "study.json").write_text(spec.model_dump_json())
    rows = []
    for arm in ("baseline", "snli"):
        for seed in (3, 4):
            node = f"eval-{arm}-{seed}"
            predicted = [seed % 3, 0, 1 if arm == "snli" else 2]
            _evaluation(study / "nodes" / node, "xnli", "dev",
                        {"en": labelled_outcomes(np.array(predicted), np.zeros(3, dtype=int), NLI)}, 40)
            rows.append({"arm": arm, "seed": seed, "task": "xnli", "split": "dev", "language": "en", "eval_node": node})
    with open(study / "results.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    packed = study / "nodes" / "eval-snli-4" / "predictions" / "en.csv"  # as in an export of the study
    packed.with_name("en.csv.gz").write_bytes(gzip.compress(packed.read_bytes()))
    packed.unlink()
    export_predictions(study, tmp_path / "out", "snli", 4)
    assert (tmp_path / "out" / "xnli" / "dev-en.tsv").read_text() == "neutral\nentailment\nneutral\n"
    assert "arm snli, seed 4" in (tmp_path / "out" / "README.md").read_text()
    for arm, seed, parts in [("snl", 3, ("--arm 'snl'", "did you mean 'snli'?")),
                             ("snli", 9, ("--seed '9'", "its seeds: 3, 4")),
                             (None, None, ("choose --arm", "baseline, snli", "--seed"))]:
        with pytest.raises(XstiltsError) as excinfo:
            export_predictions(study, tmp_path / "again", arm, seed)
        one_line_error(excinfo, *parts)
