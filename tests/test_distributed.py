"""Two processes training one phase together (accelerate launch, gloo on CPU) match one process with the
same global batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml
from safetensors.torch import load_file

from xstilts.config import parse_config
from xstilts.pipeline import run

# Measured: the largest weight difference after these phases was 8.7e-7 (float summation order only).
WEIGHT_TOLERANCE = 1e-5


def test_two_processes_match_one_with_the_same_global_batch(tmp_path, tiny_model_dir, shared_data_dir):
    """Multi-task intermediate phase with gradient accumulation, then a target phase whose global batch (15)
    splits unevenly over the two ranks; dropout off, so the only difference is summation order."""
    train = {"lr": 1e-3, "dropout": 0.0, "attention_dropout": 0.0, "eval_every": 2}
    config = {
        "name": "ddp", "model": str(tiny_model_dir), "data_dir": str(shared_data_dir), "precision": "fp32",
        "max_length": 64, "seed": 5,
        "intermediate": {"tasks": [{"task": "snli", "max_examples": 96}, {"task": "indonli", "max_examples": 64}],
                         "train": {**train, "max_steps": 4, "batch_size": 16, "grad_accumulation": 2}},
        "target": {"task": {"task": "mnli", "max_examples": 96},
                   "train": {**train, "max_steps": 6, "batch_size": 15, "checkpoint_every": 2}},
        "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en", "sw"], "max_examples": 50}],
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    one = run(parse_config(config, "test"), tmp_path / "one")
    launched = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "xstilts.cli", "run", str(path),
         "--output", str(tmp_path / "two")], capture_output=True, text=True, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    for phase in ("intermediate", "target"):
        a, b = (load_file(str(tmp_path / d / phase / "model.safetensors")) for d in ("one", "two"))
        assert max(float((a[k] - b[k]).abs().max()) for k in a) < WEIGHT_TOLERANCE
        assert [h["dev"] for h in one[phase]["metrics"]["history"]] == [h["dev"] for h in two[phase]["metrics"]["history"]]
        assert one[phase]["train_examples"] == two[phase]["train_examples"]
    assert one["evaluation"] == two["evaluation"]
    # rank 0 alone wrote the phases: no per-rank leftovers, one DONE and one prediction file per language
    assert sorted(p.name for p in (tmp_path / "two" / "target").iterdir()) == sorted(
        p.name for p in (tmp_path / "one" / "target").iterdir())
    assert "resuming" not in launched.stderr
