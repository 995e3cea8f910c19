"""Shared pieces of the benchmarks: data, the reference model built from an xstilts model, peaks, output."""

from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from xstilts.embedded_model import ensure_default_model
from xstilts.model import MultiHeadModel
from xstilts.tasks import load_registry
from xstilts.tasks.readers import read_split

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


def reference_model(num_labels: int = 3) -> torch.nn.Module:
    """Hugging Face BertForSequenceClassification on the embedded model (its pooler freshly initialised)."""
    model = AutoModelForSequenceClassification.from_pretrained(str(ensure_default_model()), num_labels=num_labels)
    model._init_weights(model.bert.pooler.dense)
    return model


def to_reference(model: MultiHeadModel, head: str) -> torch.nn.Module:
    """The same function as an xstilts encoder + head, as BertForSequenceClassification (pooler = head.dense)."""
    reference = reference_model(len(model.labels[head]))
    state = {f"bert.{k[len('encoder.'):]}": v for k, v in model.state_dict().items() if k.startswith("encoder.")}
    state |= {"bert.pooler.dense.weight": model.heads[head].dense.weight, "bert.pooler.dense.bias": model.heads[head].dense.bias,
              "classifier.weight": model.heads[head].out_proj.weight, "classifier.bias": model.heads[head].out_proj.bias}
    reference.load_state_dict(state)
    return reference


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_results(path: Path, results: dict) -> None:
    """Print the results and write them as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


def accuracy(predictions: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(predictions) == np.asarray(labels)).mean())
