"""Multiple choice: a context (and question) with N candidate answers, each scored by one shared head
(HellaSwag, Cosmos QA; on the Hub also CommonsenseQA, SocialIQA, PIQA)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts.errors import XstiltsError
from xstilts.features import Features
from xstilts.task_types.classification import Classification, ClassificationHead, tokenize
from xstilts.tasks.spec import Example, TaskSpec


class MultipleChoiceHead(nn.Module):
    """One score per (context, candidate) sequence from a one-output classification head; the scores of an
    example's candidates are its logits."""

    def __init__(self, hidden: int, dropout: float, pooling: str) -> None:
        super().__init__()
        self.scorer = ClassificationHead(hidden, 1, dropout, pooling)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, choices: int = 1) -> torch.Tensor:
        return self.scorer(hidden, attention_mask).view(-1, choices)


class MultipleChoice(Classification):
    """Cross-entropy over an example's candidates and accuracy, as for classification; the label is the index
    of the right candidate (through `label_map` or the task's `labels` when the file names candidates
    otherwise, e.g. A-D)."""

    name = "multiple_choice"

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example | None:
        raw = str(fields["label"])
        if raw in spec.skip_labels:
            return None
        choices = fields["choices"]
        if not isinstance(choices, (list, tuple)):
            raise XstiltsError(f"{where}: field 'choices' holds {type(choices).__name__}, not a list of candidates")
        if len(choices) != spec.choices:
            raise XstiltsError(f"{where}: {len(choices)} candidates, the task has {spec.choices}")
        label = label_map.get(raw, raw)
        index = spec.labels.index(label) if label in spec.labels else int(label) if label.lstrip("-").isdigit() else None
        if index is None or not 0 <= index < spec.choices:
            raise XstiltsError(f"{where}: label {raw!r} is not a candidate index 0-{spec.choices - 1}")
        context = str(fields["context"])
        if "question" in fields:
            context = f"{context} {fields['question']}"
        return Example(context, None, index, tuple(str(choice) for choice in choices))

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  spec: TaskSpec, language: str) -> Features:
        choices = len(examples[0].choices) if examples else 1
        first = [example.text_a for example in examples for _ in example.choices]
        second = [choice for example in examples for choice in example.choices]
        labels = np.array([example.label for example in examples], dtype=np.int64)
        return tokenize(first, second, tokenizer, max_length, labels, choices)

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        return MultipleChoiceHead(hidden_size, dropout, pooling)


TYPE = MultipleChoice()
