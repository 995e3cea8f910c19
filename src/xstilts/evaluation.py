"""Zero-shot evaluation: predictions of one head over many languages, sorted by length in large batches."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from xstilts.features import Features, collate, token_budget_batches
from xstilts.model import MultiHeadModel
from xstilts.precision import autocast
from xstilts.task_types import task_type


def inference_weights(model: torch.nn.Module, precision: str) -> torch.nn.Module:
    """For evaluation only: with 'bf16' the weights themselves become bf16 (about 15% faster than autocast
    over fp32 weights on CPU; LayerNorm and softmax then run in bf16 too, which changes a few predictions
    in a thousand, in both directions)."""
    return model.to(torch.bfloat16) if precision == "bf16" else model


def predict(
    model: MultiHeadModel, head: str, features: Features, pad_id: int, precision: str, device: torch.device,
    max_tokens: int = 4096,
) -> np.ndarray:
    """The head's task type's prediction per feature row (in the input order); fp32 weights run under autocast
    to `precision`, bf16 weights (see `inference_weights`) as they are."""
    kind = task_type(model.specs[head].type)
    model.eval()
    predictions = None
    half = next(model.parameters()).dtype == torch.bfloat16
    with torch.inference_mode(), (contextlib.nullcontext() if half else autocast(precision, device)):
        for indices in token_budget_batches(features.lengths, max(1, max_tokens // features.choices)):
            batch = collate(features, indices, pad_id)
            batch.pop("labels")
            logits = model(head, choices=features.choices, **{key: value.to(device) for key, value in batch.items()})
            predicted = kind.predict(logits).cpu().numpy()
            if predictions is None:
                predictions = np.empty((len(features), *predicted.shape[1:]), dtype=predicted.dtype)
            predictions[indices] = predicted
    return predictions
