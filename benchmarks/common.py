"""Shared pieces of the benchmarks: data, the reference model built from an xstilts model, peaks, output."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from xstilts.embedded_model import ensure_default_model
from xstilts.model import HeadSpec, MultiHeadModel, load_encoder
from xstilts.tasks import load_registry
from xstilts.task_types import read_split

DATA_DIR = Path(os.environ.get("XSTILTS_DATA_DIR", Path(__file__).resolve().parents[1] / ".." / "shared" / "data"))
XNLI_LANGUAGES = load_registry().get("xnli").languages


def examples(task: str, split: str, language: str = "en", limit: int | None = None):
    """Rows of a built-in task from the local data folder."""
    rows = read_split(load_registry().get(task), split, language, DATA_DIR).examples
    return rows[:limit] if limit else rows


def matmul_peak_tflops(dtype: torch.dtype, size: int = 2048, repeats: int = 10) -> float:
    """Measured TFLOP/s of a size x size matmul in `dtype` (the roofline the benchmarks compare to)."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - started) / 1e12


def non_embedding_parameters(model: torch.nn.Module) -> int:
    """Parameters outside the word-embedding matrix (what a token's FLOPs scale with)."""
    embedding = model.get_input_embeddings().weight if hasattr(model, "get_input_embeddings") else None
    return sum(p.numel() for p in model.parameters() if p is not embedding)


class TrainerAdapter(torch.nn.Module):
    """An xstilts model (encoder + one head) with the forward signature the HF Trainer expects, so both
    sides compute the same function from the same initial weights and only the machinery differs."""

    def __init__(self, model: MultiHeadModel, head: str) -> None:
        super().__init__()
        self.model, self.head = model, head

    def forward(self, input_ids, attention_mask, token_type_ids=None, labels=None) -> SequenceClassifierOutput:
        logits = self.model(self.head, input_ids, attention_mask)
        loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return SequenceClassifierOutput(loss=loss, logits=logits)


def fresh_model(seed: int, head: str = "mnli") -> MultiHeadModel:
    """The embedded encoder with a new head, initialised from `seed` (as xstilts' target phase does)."""
    torch.manual_seed(seed)
    return MultiHeadModel(load_encoder(str(ensure_default_model())), {head: HeadSpec("classification", tuple(load_registry().get(head).labels))})


def write_results(path: Path, results: dict) -> None:
    """Print the results and write them as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(predictions) == np.asarray(labels)).mean())


def predict_in_order(model: torch.nn.Module, dataset, collator) -> np.ndarray:
    """`Trainer.predict` in the dataset's order. A Trainer set to group batches by length also reorders its
    prediction batches (transformers 5.24), so predictions are taken with a plain one."""
    import tempfile

    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(output, per_device_eval_batch_size=32, report_to=[],
                                      use_cpu=not torch.cuda.is_available())
        return Trainer(model=model, args=arguments, data_collator=collator).predict(dataset).predictions
