"""Evaluation throughput: xstilts vs `Trainer.predict` (run_xnli.py defaults: pad to max length, fp32,
eval batch 8) on all 15 XNLI test sets with the same trained model (an xstilts phase directory),
fed to the Trainer through an adapter, so both sides compute the same function.

    python benchmarks/bench_eval.py --model-dir runs/bench-train --short   # 200 pairs per language
    python benchmarks/bench_eval.py --model-dir runs/bench-train           # all 75,150 pairs
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, XNLI_LANGUAGES, TrainerAdapter, accuracy, examples, write_results  # noqa: E402

MAX_LENGTH = 128


def reference_predict(model, tokenizer, rows) -> tuple[np.ndarray, float]:
    """Trainer.predict over padded rows; returns predictions and seconds (tokenization included)."""
    import datasets
    from transformers import Trainer, TrainingArguments

    started = time.perf_counter()
    encoded = tokenizer([r.text_a for r in rows], [r.text_b for r in rows], padding="max_length",
                        max_length=MAX_LENGTH, truncation=True)
    dataset = datasets.Dataset.from_dict(dict(encoded))
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_eval_batch_size=8, report_to=[], use_cpu=True,
                                 disable_tqdm=True)
        predictions = Trainer(model=model, args=args).predict(dataset).predictions.argmax(-1)
    return predictions, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True, help="a trained xstilts phase directory")
    parser.add_argument("--head", default="mnli")
    parser.add_argument("--short", action="store_true", help="200 pairs per language")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval.json"))
    args = parser.parse_args()
    from xstilts.evaluation import inference_weights, predict
    from xstilts.task_types.classification import TYPE as CLASSIFICATION
    from xstilts.model import load_trained
    from xstilts.phases import Context
    from xstilts.tasks import load_registry

    ctx = Context.create("embedded", load_registry(), DATA_DIR, MAX_LENGTH, "auto")
    reference = TrainerAdapter(load_trained(ctx.model, args.model_dir), args.head).eval()
    model = load_trained(ctx.model, args.model_dir)
    limit = 200 if args.short else None
    per_language, seconds = {}, {"reference": 0.0, "xstilts": 0.0}
    started = time.perf_counter()
    model = inference_weights(model, ctx.precision)  # what `xstilts run` evaluates with
    seconds["xstilts"] += time.perf_counter() - started
    pairs = 0
    for language in XNLI_LANGUAGES:
        rows = examples("xnli", "test", language, limit)
        labels = np.array([r.label for r in rows])
        ref_predictions, ref_seconds = reference_predict(reference, ctx.tokenizer, rows)
        started = time.perf_counter()
        features = CLASSIFICATION.featurize(rows, ctx.tokenizer, MAX_LENGTH, ctx.registry.get("xnli"), language)
        ours = predict(model, args.head, features, ctx.tokenizer.pad_token_id, ctx.precision, ctx.device)
        seconds["xstilts"] += time.perf_counter() - started
        seconds["reference"] += ref_seconds
        pairs += len(rows)
        per_language[language] = {"reference": accuracy(ref_predictions, labels), "xstilts": accuracy(ours, labels),
                                  "n": len(rows), "agreement": accuracy(ours, ref_predictions)}
        print(f"{language}: {per_language[language]}", file=sys.stderr)
    averages = {side: float(np.mean([v[side] for v in per_language.values()])) for side in ("reference", "xstilts")}
    write_results(args.out, {
        "mode": "short" if args.short else "full", "pairs": pairs, "precision": ctx.precision,
        "pairs_per_second": {side: pairs / s for side, s in seconds.items()},
        "eval_speedup": seconds["reference"] / seconds["xstilts"],
        "per_language": per_language, "average_accuracy": averages,
        "max_language_accuracy_delta": max(abs(v["xstilts"] - v["reference"]) for v in per_language.values()),
        "avg_accuracy_delta": averages["xstilts"] - averages["reference"],
    })


if __name__ == "__main__":
    main()
