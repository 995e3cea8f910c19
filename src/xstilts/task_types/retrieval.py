"""Sentence retrieval (Tatoeba; BUCC on the Hub): no training data and no head. Each sentence of a language
and the English sentences are embedded by the encoder (its pooling over the last layer: mean for E5
models) and every sentence is matched to its nearest English sentence by cosine similarity; the score is
the fraction matched to their own translation, the xx -> en accuracy XTREME reports for Tatoeba. Any
encoder can be scored: the base model, or any phase's trained model."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from xstilts.errors import XstiltsError
from xstilts.features import Features, collate, token_budget_batches
from xstilts.pooling import pool
from xstilts.task_types.classification import labelled_outcomes
from xstilts.precision import autocast
from xstilts.tasks.spec import Example, TaskSpec


class Retrieval:
    """An example is a sentence and its English translation; its target is its own row (its row number in the
    file, kept through subsampling)."""

    name = "retrieval"
    metrics = ("accuracy",)
    trainable = False
    evaluated = True
    shared_head: str | None = None
    masks_pieces = False

    def example(self, spec: TaskSpec, fields: dict[str, Any], label_map: dict[str, str], where: str) -> Example:
        return Example(str(fields["text_a"]), str(fields["text_b"]), -1)

    def featurize(self, examples: list[Example], tokenizer: PreTrainedTokenizerBase, max_length: int,
                  spec: TaskSpec, language: str) -> Features:
        """Each example's two sentences, tokenized separately (two sequences per example)."""
        sentences = [text for example in examples for text in (example.text_a, example.text_b)]
        encoded = tokenizer(sentences, truncation=True, max_length=max_length, padding=False)
        return Features(encoded["input_ids"], None, np.arange(len(examples)), choices=2)

    def head(self, hidden_size: int, labels: list[str], dropout: float, pooling: str) -> nn.Module:
        raise XstiltsError("a retrieval task has no head and no training data: use it as an evaluation")

    def outcomes(self, predictions: np.ndarray, features: Features, names: list[str] | None) -> list[dict]:
        return labelled_outcomes(predictions, features.labels, None)

    def retrieve(self, encoder: nn.Module, features: Features, pad_id: int, pooling: str, precision: str,
                 device: torch.device, max_tokens: int = 4096) -> np.ndarray:
        """For each example's first sentence, the target (row) of the nearest second sentence (cosine) among the
        examples given."""
        sentences = Features(features.input_ids, None, np.arange(len(features.input_ids)))
        vectors = torch.empty(len(sentences), encoder.config.hidden_size)
        encoder.eval()
        with torch.inference_mode(), autocast(precision, device):
            for rows in token_budget_batches(sentences.lengths, max_tokens):
                batch = collate(sentences, rows, pad_id)
                batch.pop("labels")
                batch = {key: value.to(device) for key, value in batch.items()}
                hidden = encoder(**batch).last_hidden_state
                vectors[torch.from_numpy(rows)] = pool(hidden, batch["attention_mask"], pooling).float().cpu()
        vectors = nn.functional.normalize(vectors, dim=-1).view(len(features), 2, -1)
        return features.labels[(vectors[:, 0] @ vectors[:, 1].T).argmax(-1).numpy()]


TYPE = Retrieval()
