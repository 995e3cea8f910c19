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


def tiny_run(model_dir: Path, data_dir: Path, eval_examples: int = 10) -> dict:
    """A run config on the tiny model: one target step on 16 MNLI dev pairs, XNLI dev en."""
    return {"model": str(model_dir), "data_dir": str(data_dir), "precision": "fp32", "max_length": 32,
            "target": {"task": {"task": "mnli", "split": "dev", "max_examples": 16},
                       "train": {"max_steps": 1, "batch_size": 8}},
            "evaluate": [{"task": "xnli", "split": "dev", "languages": ["en"], "max_examples": eval_examples}]}


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


# Unit roundoffs: the largest relative error of one rounding to the format.
FP32_ROUNDOFF = 2.0 ** -24  # ≈ 6.0e-8
BF16_ROUNDOFF = 2.0 ** -8  # ≈ 3.9e-3


def assert_relative_error(actual, expected, tolerance: float, name: str = "values") -> None:
    """||actual - expected|| <= tolerance · ||expected||, 2-norms over the whole tensor: rounding errors of sums
    scale with the magnitudes summed, which the norm reflects and one entry that cancels to near zero does not."""
    error = float((actual.double() - expected.double()).norm() / expected.double().norm())
    assert error <= tolerance, f"{name}: relative error {error:.3g} > tolerance {tolerance:.3g}"


def assert_same_gradients(actual: dict, expected: dict, tolerance: float) -> None:
    """Every parameter's gradient within `tolerance` (`assert_relative_error`); the attention key biases, whose
    gradients are zero in exact arithmetic (softmax ignores a shift shared by a query's scores) and rounding
    noise here, within `tolerance` of the largest gradient entry."""
    assert actual.keys() == expected.keys()
    scale = max(float(gradient.abs().max()) for gradient in expected.values())
    for name, gradient in expected.items():
        if name.endswith("attention.self.key.bias"):
            assert max(float(gradient.abs().max()), float(actual[name].abs().max())) <= tolerance * scale, name
        else:
            assert_relative_error(actual[name], gradient, tolerance, name)


def training_pass(model, features, rows, pad_id: int, precision: str = "fp32", multiple: int = 1, ranks=None):
    """One forward/backward pass of a CPU training step as `xstilts.training` runs it (training attention,
    autocast, dropout as the model has it): this rank's share of the global batch `rows`, padded to a multiple
    of `multiple`, loss summed over rows and divided by the global batch, gradients summed over the ranks.
    Returns (loss summed over ranks, this rank's logits, gradients by parameter name)."""
    import torch

    from xstilts.attention import attention_implementation, training_attention
    from xstilts.distributed import Ranks
    from xstilts.features import collate
    from xstilts.precision import autocast
    from xstilts.task_types import task_type

    ranks, device = ranks or Ranks(), torch.device("cpu")
    (head, spec), = model.specs.items()
    model.train().zero_grad(set_to_none=True)
    batch = collate(features, ranks.shard(rows), pad_id, multiple)
    labels = batch.pop("labels")
    with attention_implementation(model.encoder, training_attention("auto", device)), autocast(precision, device):
        logits = model(head, **batch)
    loss = task_type(spec.type).loss(logits, labels) / len(rows)
    loss.backward()
    total = ranks.sum_gradients([p for p in model.parameters() if p.requires_grad], loss.item())
    return total, logits.detach().float(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
