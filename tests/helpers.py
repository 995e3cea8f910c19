"""Assertions and small study specs shared by several test modules."""

from pathlib import Path

import pytest


def one_line_error(excinfo: pytest.ExceptionInfo, *parts: str) -> str:
    """The error's message, checked to be one line containing every part."""
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, (part, message)
    return message


def tiny_study(model_dir: Path, data_dir: Path, arms: list[dict], **target_train) -> dict:
    """A study on the tiny model: a few steps per phase, XNLI dev en/sw, 40 items each."""
    return {
        "name": "tiny", "model": str(model_dir), "data_dir": str(data_dir), "max_length": 64, "seeds": [3],
        "intermediate_train": {"max_steps": 4, "batch_size": 8, "eval_every": 2},
        "target": {"task": {"task": "mnli", "max_examples": 96},
                   "train": {"max_steps": 6, "batch_size": 8, "eval_every": 3, **target_train}},
        "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en", "sw"], "max_examples": 40}],
        "arms": arms,
    }


SNLI = {"name": "snli", "group": "english", "tasks": [{"task": "snli"}], "cap": 64}
INDONLI = {"name": "indonli", "group": "low-resource", "tasks": [{"task": "indonli"}], "cap": 64}


def learning_run(model_dir: Path, data: Path, tasks: Path, task: str) -> dict:
    """A run config that trains a user task from scratch on the tiny model (40 steps, dev every 4) and
    evaluates its dev split."""
    return {
        "model": str(model_dir), "data_dir": str(data), "task_dirs": [str(tasks)], "precision": "fp32",
        "max_length": 64, "seed": 3,
        "target": {"task": {"task": task},
                   # a random model has no pretrained embeddings to keep: let it learn the pieces
                   "train": {"max_steps": 40, "lr": 3e-3, "batch_size": 16, "eval_every": 4, "warmup_ratio": 0.0,
                             "select_best": False, "freeze_embeddings": False}},
        "evaluate": [{"task": task, "split": "dev"}]}
