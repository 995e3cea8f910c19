"""Classification of a text or a text pair into one of the task's labels (NLI, paraphrase, sentiment)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts.errors import XstiltsError
from xstilts.features import Features
from xstilts.pooling import pool
from xstilts.tasks.spec import Example, TaskSpec


class ClassificationHead(nn.Module):
    """Pooling, then dropout -> dense -> tanh -> dropout -> projection to `outputs` scores."""

    def __init__(self, hidden: int, outputs: int, dropout: float, pooling: str) -> None:
        super().__init__()
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden, hidden)
        self.out_proj = nn.Linear(hidden, outputs)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, choices: int = 1) -> torch.Tensor:
        x = self.dropout(pool(hidden, attention_mask, self.pooling))
        x = self.dropout(torch.tanh(self.dense(x)))
        return self.out_proj(x)


def tokenize(first: list[str], second: list[str] | None, tokenizer: PreTrainedTokenizerBase, max_length: int,
             labels: np.ndarray, choices: int = 1) -> Features:
    """Tokenize texts (or pairs) with truncation to `max_length`, without padding."""
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding=False)
    types = encoded.get("token_type_ids")
    uses_types = types is not None and any(any(row) for row in types)
    return Features(encoded["input_ids"], types if uses_types else None, labels, choices)


def label_index(spec: TaskSpec, raw: Any, label_map: dict[str, str], where: str) -> int | None:
    """The index of a raw label in the task's label list (through `label_map`); None for a label in
    `skip_labels` (an unlabelled row)."""
    raw_label = str(raw)
    if raw_label in spec.skip_labels:
        return None
    label = label_map.get(raw_label, raw_label)
    if label not in spec.labels:
        raise XstiltsError(f"{where}: unknown label {raw_label!r} (expected one of {', '.join(spec.labels)})")
    return spec.labels.index(label)


class Classification:
    """Cross-entropy over the label set; accuracy."""

    name = "classification"
    metrics = ("accuracy",)
    trainable = True
    evaluated = True
    shared_head: str | None = None
    masks_pieces = False

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example | None:
        label = label_index(spec, fields["label"], label_map, where)
        if label is None:
            return None
        text_b = fields.get("text_b")
        return Example(str(fields["text_a"]), None if text_b is None else str(text_b), label)

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  spec: TaskSpec, language: str) -> Features:
        first = [example.text_a for example in examples]
        second = [example.text_b or "" for example in examples] if examples and examples[0].text_b is not None else None
        return tokenize(first, second, tokenizer, max_length, np.array([e.label for e in examples], dtype=np.int64))

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        return ClassificationHead(hidden_size, len(labels), dropout, pooling)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), labels, reduction="sum")

    def predict(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(-1)

    def outcomes(self, predictions: np.ndarray, features: Features, names: list[str] | None) -> list[dict]:
        return labelled_outcomes(predictions, features.labels, names)


def labelled_outcomes(predictions: np.ndarray, labels: np.ndarray, names: list[str] | None) -> list[dict]:
    """Index, gold label, predicted label (a label name, or a candidate or row index) and correct (0/1) of
    every example."""
    return [{"index": index, "label": names[gold] if names else int(gold),
             "prediction": names[predicted] if names else int(predicted), "correct": int(gold == predicted)}
            for index, (gold, predicted) in enumerate(zip(labels, predictions))]


TYPE = Classification()
