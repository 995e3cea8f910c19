"""Span QA against an independent reference: the Hugging Face `AutoModelForQuestionAnswering` on the same
converted model, trained by the HF Trainer on the same data with the same hyperparameters as
`configs/tydiqa-en.yaml` (TyDiQA-GoldP English train, one epoch, lr 5e-5, batch 16, 10% warm-up, weight decay
0.01, 384-piece windows with doc stride 128), its features and post-processing written as the transformers QA
example (run_qa.py, utils_qa.py) does them: the CLS piece as the target of a window without the answer, the
20 best start and end logits per window, spans inside the context of at most 30 pieces, the best score over
a question's windows. Both sides are scored with `xstilts.qa_metrics` (itself checked against the official
SQuAD v1.1 script in tests/test_qa_metrics.py) on XQuAD English (1,190 questions). Batches are padded to their
longest window and grouped by length on both sides (padding every window to 384 pieces quadruples the
reference's time on a CPU and changes nothing else).

    python benchmarks/bench_qa.py                        # trains both sides (~45 min on a 2-core CPU)
    python benchmarks/bench_qa.py --xstilts-run runs/tydiqa-en   # reuse a finished `xstilts run configs/tydiqa-en.yaml`
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DATA_DIR, examples, predict_in_order, write_results  # noqa: E402

from xstilts import qa_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "tydiqa-en.yaml"
SEED, LR, BATCH, EPOCHS, WARMUP, DECAY = 13, 5e-5, 16, 1, 0.1, 0.01
MAX_LENGTH, STRIDE, N_BEST, MAX_ANSWER = 384, 128, 20, 30


def _encode(tokenizer, rows):
    return tokenizer([r.text_a.lstrip() for r in rows], [r.text_b for r in rows], truncation="only_second",
                     max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True, return_offsets_mapping=True)


def train_features(tokenizer, rows) -> dict:
    """run_qa.py's prepare_train_features: start/end pieces of the first answer, or the CLS piece."""
    encoded = _encode(tokenizer, rows)
    starts, ends = [], []
    for i, offsets in enumerate(encoded["offset_mapping"]):
        cls = encoded["input_ids"][i].index(tokenizer.cls_token_id)
        sequence_ids = encoded.sequence_ids(i)
        text, start_char = rows[encoded["overflow_to_sample_mapping"][i]].answers[0]
        end_char = start_char + len(text)
        token_start = 0
        while sequence_ids[token_start] != 1:
            token_start += 1
        token_end = len(encoded["input_ids"][i]) - 1
        while sequence_ids[token_end] != 1:
            token_end -= 1
        if not (offsets[token_start][0] <= start_char and offsets[token_end][1] >= end_char):
            starts.append(cls)
            ends.append(cls)
            continue
        while token_start < len(offsets) and offsets[token_start][0] <= start_char:
            token_start += 1
        starts.append(token_start - 1)
        while offsets[token_end][1] >= end_char:
            token_end -= 1
        ends.append(token_end + 1)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"],
            "start_positions": starts, "end_positions": ends}


def eval_features(tokenizer, rows) -> tuple[dict, list[int], list[list]]:
    """run_qa.py's prepare_validation_features: the windows, their question, and offsets only in the context."""
    encoded = _encode(tokenizer, rows)
    offsets = [[span if sequence == 1 else None for span, sequence in zip(encoded["offset_mapping"][i], encoded.sequence_ids(i))]
               for i in range(len(encoded["input_ids"]))]
    return ({"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]},
            list(encoded["overflow_to_sample_mapping"]), offsets)


def postprocess(rows, owners: list[int], offsets: list[list], start_logits: np.ndarray, end_logits: np.ndarray) -> list[str]:
    """utils_qa.py's postprocess_qa_predictions without the null answer: the best-scoring valid span."""
    best = [(-np.inf, "") for _ in rows]
    for window, owner in enumerate(owners):
        window_offsets = offsets[window]
        for start in np.argsort(start_logits[window])[-1:-N_BEST - 1:-1]:
            for end in np.argsort(end_logits[window])[-1:-N_BEST - 1:-1]:
                if start >= len(window_offsets) or end >= len(window_offsets) or window_offsets[start] is None \
                        or window_offsets[end] is None or end < start or end - start + 1 > MAX_ANSWER:
                    continue
                score = start_logits[window][start] + end_logits[window][end]
                if score > best[owner][0]:
                    best[owner] = (score, rows[owner].text_b[window_offsets[start][0]:window_offsets[end][1]])
    return [text for _, text in best]


def run_reference() -> dict:
    """Train and evaluate the HF side; F1 and EM on XQuAD English."""
    import datasets
    import torch
    from transformers import (AutoModelForQuestionAnswering, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    from xstilts.embedded_model import ensure_default_model

    path = str(ensure_default_model())
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = datasets.Dataset.from_dict(train_features(tokenizer, examples("tydiqa", "train", "en")))
    torch.manual_seed(SEED)
    model = AutoModelForQuestionAnswering.from_pretrained(path)
    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(output, per_device_train_batch_size=BATCH, per_device_eval_batch_size=32,
                                      learning_rate=LR, num_train_epochs=EPOCHS,
                                      warmup_steps=int(WARMUP * math.ceil(EPOCHS * len(train) / BATCH)),
                                      weight_decay=DECAY, seed=SEED, save_strategy="no", report_to=[],
                                      train_sampling_strategy="group_by_length",  # as xstilts batches
                                      logging_steps=20, use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model, args=arguments, train_dataset=train,
                          data_collator=DataCollatorWithPadding(tokenizer))
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        rows = examples("xquad", "test", "en")
        features, owners, offsets = eval_features(tokenizer, rows)
        logits = predict_in_order(model, datasets.Dataset.from_dict(features), DataCollatorWithPadding(tokenizer))
    predictions = postprocess(rows, owners, offsets, *logits)
    gold = [[text for text, _ in row.answers] for row in rows]
    return {"f1": 100 * float(np.mean([qa_metrics.f1(p, g) for p, g in zip(predictions, gold)])),
            "exact_match": 100 * float(np.mean([qa_metrics.exact_match(p, g) for p, g in zip(predictions, gold)])),
            "train_windows": len(train), "train_seconds": round(train_seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--xstilts-run", type=Path, help="a finished run of configs/tydiqa-en.yaml (else one is run)")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "qa.json")
    args = parser.parse_args()
    reference = run_reference()
    run_dir = args.xstilts_run or ROOT / "runs" / "bench-qa"
    if not (run_dir / "metrics.json").exists():
        subprocess.run([sys.executable, "-m", "xstilts.cli", "run", str(CONFIG), "--output", str(run_dir),
                        "--data-dir", str(DATA_DIR)], check=True)
    target = json.loads((run_dir / "target" / "result.json").read_text())
    xquad = json.loads((run_dir / "eval-xquad-test" / "result.json").read_text())["languages"]["en"]["scores"]
    xstilts = {"f1": 100 * xquad["f1"], "exact_match": 100 * xquad["exact_match"],
               "train_windows": sum(target["train_examples"].values()), "train_seconds": target["seconds"]}
    write_results(args.output, {
        "task": "tydiqa en train -> xquad en test", "config": str(CONFIG.relative_to(ROOT)),
        "xstilts": xstilts, "reference_hf_qa": reference,
        "f1_difference_points": round(xstilts["f1"] - reference["f1"], 2),
        "exact_match_difference_points": round(xstilts["exact_match"] - reference["exact_match"], 2),
    })


if __name__ == "__main__":
    main()
