"""Zero-shot evaluation: predictions of one head over many languages, sorted by length in large batches."""

from __future__ import annotations

import numpy as np
import torch

from xstilts.features import Features, collate, token_budget_batches
from xstilts.model import MultiHeadModel
from xstilts.precision import autocast


def predict(
    model: MultiHeadModel, head: str, features: Features, pad_id: int, precision: str, device: torch.device,
    max_tokens: int = 16384,
) -> np.ndarray:
    """Predicted label index per example (in the input order)."""
    model.eval()
    predictions = np.empty(len(features), dtype=np.int64)
    with torch.inference_mode(), autocast(precision, device):
        for indices in token_budget_batches(features.lengths, max_tokens):
            batch = collate(features, indices, pad_id)
            batch.pop("labels")
            logits = model(head, **{key: value.to(device) for key, value in batch.items()})
            predictions[indices] = logits.argmax(-1).cpu().numpy()
    return predictions


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of correct predictions."""
    return float((predictions == labels).mean())
