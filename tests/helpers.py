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
