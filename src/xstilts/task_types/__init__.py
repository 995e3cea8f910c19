"""Task types: how a type's records become features, the head that scores them, its loss, its predictions
and its metric. One module per type; `TASK_TYPES` is the explicit map from a task's `type:` to its module's
`TaskType`, so the training loop and the evaluation loop stay one loop each."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts.errors import XstiltsError
from xstilts.features import Features
from xstilts.tasks.readers import SplitData, read_records
from xstilts.tasks.spec import Example, TaskSpec


class TaskType(Protocol):
    """The stages one task type defines: record -> example -> features -> head -> loss -> prediction -> metric.
    A type without training data (retrieval) defines the first two and its metric, and scores an encoder."""

    name: str
    metrics: tuple[str, ...]  # what `outcomes` measures per example; the first is the primary metric
    trainable: bool  # False: no training data and no head; it scores an encoder with `retrieve` (retrieval)
    evaluated: bool  # False: trained, never scored (masked LM): no dev selection, never a target or evaluation
    shared_head: str | None  # the one head every task of the type in a phase trains (masked LM); None: one each
    masks_pieces: bool  # its batches are masked anew at every draw (masked LM)

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example | None:
        """A record's fields (named as in the task's `columns`) as an example; None skips an unlabelled row."""

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  spec: TaskSpec, language: str) -> Features:
        """Token ids of one language's examples, unpadded."""

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        """A fresh head: `forward(hidden, attention_mask, choices, **head_inputs)` -> logits (`head_inputs`: the
        batch entries of `model.HEAD_INPUTS`, e.g. masked LM's `masked`)."""

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The loss summed over the batch's examples."""

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        """One prediction per feature row (a tensor row per example, or per window for span QA)."""

    def outcomes(self, predictions: np.ndarray, features: Features, names: list[str] | None) -> list[dict]:
        """One record per example: its index (the same item in every run of the evaluation: a row of the fixed
        subsample, or a span-QA question's place in its data), gold and prediction (label `names` where the task
        has them) and its value of every metric (`item_column(metric)`), as the predictions file keeps it. A type
        whose metric over a set is not the mean of these values (token classification's span F1) also defines
        `corpus_scores(outcomes) -> {metric: value}`."""


def item_column(metric: str) -> str:
    """The column of a predictions file that holds an example's value of `metric` (accuracy: `correct`, 0/1)."""
    return "correct" if metric == "accuracy" else metric


def score_outcomes(kind: TaskType, outcomes: list[dict]) -> dict[str, float]:
    """Every metric of a task type over the examples' outcomes: the type's `corpus_scores` where it has them,
    else the mean of the per-example values."""
    if hasattr(kind, "corpus_scores"):
        return kind.corpus_scores(outcomes)
    return {metric: float(np.mean([row[item_column(metric)] for row in outcomes])) for metric in kind.metrics}


def task_type(name: str) -> TaskType:
    """The type registered under `name`."""
    from xstilts.task_types import classification, masked_lm, multiple_choice, retrieval, span_qa, token_classification

    return {"classification": classification.TYPE, "multiple_choice": multiple_choice.TYPE,
            "span_qa": span_qa.TYPE, "retrieval": retrieval.TYPE, "masked_lm": masked_lm.TYPE,
            "token_classification": token_classification.TYPE}[name]


def task_kind(spec: TaskSpec) -> TaskType:
    """The type of a task as it scores it: its type, with the task's own metric and labels where the type has
    options (token classification: `metric:` accuracy or f1)."""
    if spec.type == "token_classification":
        from xstilts.task_types.token_classification import TokenClassification

        return TokenClassification(spec.metric or "accuracy", tuple(spec.labels))
    return task_type(spec.type)


def read_split(spec: TaskSpec, split: str, language: str, data_dir: Path | None, source: str = "auto") -> SplitData:
    """A split's examples: its rows read (`tasks.readers`), each turned into an example by the task's type; a
    row whose label is one of the task's `skip_labels` is counted, not kept."""
    read = read_records(spec, split, language, data_dir, source)
    own = spec.for_language(language)
    kind = task_kind(own)
    examples, skipped = [], 0
    for record in read.records:
        example = kind.example(own, record.fields, read.label_map, record.where)
        if example is None:
            skipped += 1
        else:
            examples.append(example)
    if not examples:
        raise XstiltsError(f"{read.source}: no labelled examples")
    return SplitData(read.task, split, language, examples, read.source, read.sha256, skipped, own.labels)
