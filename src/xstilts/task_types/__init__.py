"""Task types: how a type's records become features, the head that scores them, its loss, its predictions
and its metric. One module per type; `TASK_TYPES` is the explicit map from a task's `type:` to its module's
`TaskType`, so the training loop and the evaluation loop stay one loop each."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts.features import Features
from xstilts.tasks.spec import Example, TaskSpec


class TaskType(Protocol):
    """The stages one task type defines: record -> example -> features -> head -> loss -> prediction -> metric.
    A type without training data (retrieval) defines the first two and its metric, and scores an encoder."""

    name: str
    metric: str  # what `score` measures

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example | None:
        """A record's fields (named as in the task's `columns`) as an example; None skips an unlabelled row."""

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int) -> Features:
        """Token ids of the examples, unpadded."""

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        """A fresh head: `forward(hidden, attention_mask, choices)` -> logits."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss summed over the batch's examples."""

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """One prediction per example."""

    def score(self, predictions: np.ndarray, labels: np.ndarray) -> float:
        """The metric over all predictions."""


def task_type(name: str) -> TaskType:
    """The type registered under `name`."""
    from xstilts.task_types import classification, multiple_choice, retrieval

    return {"classification": classification.TYPE, "multiple_choice": multiple_choice.TYPE,
            "retrieval": retrieval.TYPE}[name]
