"""Token tagging against an independent reference: the Hugging Face `AutoModelForTokenClassification` on the
same converted model, trained by the HF Trainer on the same data with the same hyperparameters as
`configs/panx-en.yaml` and `configs/udpos-en.yaml` (English train, one epoch, lr 5e-5, batch 32, 10% warm-up,
weight decay 0.01, 128 pieces, the word embeddings frozen, the model's own dropout, the last model kept), its
features as the transformers token-classification example (run_ner.py) writes them: the words tokenized with
`is_split_into_words`, each word's tag on its first piece and -100 on the others. The reference is scored by
`seqeval` (PAN-X: entity span F1 on English dev, 10,000 sentences) and by word accuracy (UD POS: English test,
5,440 sentences); xstilts' own predictions files are scored by `seqeval` as well, next to xstilts' score.
The reference predicts with 512 pieces so that no word is cut off (xstilts predicts long sentences in windows);
a word left without a piece would be predicted `O` (PAN-X) or counted wrong (UD POS).

    python benchmarks/bench_tagging.py                 # trains both sides of both tasks (about an hour, 2-core CPU)
    python benchmarks/bench_tagging.py --tasks panx    # one task
"""

from __future__ import annotations

import argparse
import csv
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

from xstilts.tasks import load_registry  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED, LR, BATCH, EPOCHS, WARMUP, DECAY, MAX_LENGTH = 13, 5e-5, 32, 1, 0.1, 0.01, 128
TASKS = {"panx": ("dev", "f1"), "udpos": ("test", "accuracy")}


def features(tokenizer, rows, max_length: int) -> dict:
    """run_ner.py's tokenize_and_align_labels (label_all_tokens false), plus each piece's word."""
    encoded = tokenizer([list(r.words) for r in rows], is_split_into_words=True, truncation=True,
                        max_length=max_length)
    labels, words = [], []
    for i, row in enumerate(rows):
        previous, tags, owners = None, [], []
        for word in encoded.word_ids(i):
            tags.append(-100 if word is None or word == previous else row.tags[word])
            owners.append(-1 if word is None or word == previous else word)
            previous = word
        labels.append(tags)
        words.append(owners)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}, words


def score(metric: str, gold: list[list[str]], predicted: list[list[str]]) -> float:
    """seqeval's entity F1 (default mode) or word accuracy, in points."""
    if metric == "f1":
        from seqeval.metrics import f1_score

        return 100 * float(f1_score(gold, predicted))
    pairs = [(g, p) for g_row, p_row in zip(gold, predicted) for g, p in zip(g_row, p_row)]
    return 100 * float(np.mean([g == p for g, p in pairs]))


def run_reference(task: str) -> dict:
    """Train and evaluate the HF side of one task."""
    import datasets
    import torch
    from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                              Trainer, TrainingArguments)

    from xstilts.embedded_model import ensure_default_model

    split, metric = TASKS[task]
    names = load_registry().get(task).labels
    path = str(ensure_default_model())
    tokenizer = AutoTokenizer.from_pretrained(path)
    train = datasets.Dataset.from_dict(features(tokenizer, examples(task, "train", "en"), MAX_LENGTH)[0])
    torch.manual_seed(SEED)
    model = AutoModelForTokenClassification.from_pretrained(
        path, num_labels=len(names), id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    model.get_input_embeddings().weight.requires_grad_(False)  # as xstilts' freeze_embeddings (the default)
    collator = DataCollatorForTokenClassification(tokenizer)
    with tempfile.TemporaryDirectory() as output:
        arguments = TrainingArguments(output, per_device_train_batch_size=BATCH, learning_rate=LR,
                                      num_train_epochs=EPOCHS,
                                      warmup_steps=int(WARMUP * math.ceil(EPOCHS * len(train) / BATCH)),
                                      weight_decay=DECAY, seed=SEED, save_strategy="no", report_to=[],
                                      train_sampling_strategy="group_by_length",  # as xstilts batches
                                      logging_steps=50, use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model, args=arguments, train_dataset=train, data_collator=collator)
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
    rows = examples(task, split, "en")
    encoded, owners = features(tokenizer, rows, 512)
    logits = predict_in_order(model, datasets.Dataset.from_dict(encoded), collator)
    gold, predicted, unpieced = [], [], 0
    for i, row in enumerate(rows):
        guess = ["O" if metric == "f1" else None] * len(row.words)
        for position, word in enumerate(owners[i]):
            if word >= 0:
                guess[word] = names[int(np.argmax(logits[i][position]))]
        unpieced += len(row.words) - len({word for word in owners[i] if word >= 0})
        gold.append([names[t] for t in row.tags])
        predicted.append([g if g is not None else "" for g in guess])
    return {metric: score(metric, gold, predicted), "train_sentences": len(train),
            "train_seconds": round(train_seconds, 1), "words_without_a_piece": unpieced}


def run_xstilts(task: str, run_dir: Path) -> dict:
    """xstilts' side: a run of the task's config (run here unless finished), its score and seqeval's."""
    split, metric = TASKS[task]
    if not (run_dir / "metrics.json").exists():  # a one-cell study: an interrupted run resumes
        subprocess.run([sys.executable, "-m", "xstilts.cli", "run", str(ROOT / "configs" / f"{task}-en.yaml"),
                        "--output", str(run_dir), "--data-dir", str(DATA_DIR)], check=True)
    target = json.loads((run_dir / "target" / "result.json").read_text())
    evaluation = json.loads((run_dir / f"eval-{task}-{split}" / "result.json").read_text())["languages"]["en"]
    with open(run_dir / f"eval-{task}-{split}" / "predictions" / "en.csv", newline="") as handle:
        predictions = list(csv.DictReader(handle))
    if metric == "f1":
        gold = [row["labels"].split(" ") for row in predictions]
        predicted = [row["predictions"].split(" ") for row in predictions]
    else:
        gold = [[row["label"]] for row in predictions]
        predicted = [[row["prediction"]] for row in predictions]
    return {metric: 100 * evaluation["scores"][metric], f"{metric}_by_seqeval_on_its_predictions":
            score(metric, gold, predicted), "train_sentences": sum(target["train_examples"].values()),
            "train_seconds": target["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="panx,udpos", help="comma-separated: panx, udpos")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "tagging.json")
    args = parser.parse_args()
    results = json.loads(args.output.read_text()) if args.output.exists() else {}
    for task in args.tasks.split(","):
        split, metric = TASKS[task]
        xstilts = run_xstilts(task, ROOT / "runs" / f"bench-tagging-{task}")
        reference = run_reference(task)
        results[task] = {"data": f"{task} en train -> {task} en {split}", "config": f"configs/{task}-en.yaml",
                         "xstilts": xstilts, "reference_hf_token_classification": reference,
                         f"{metric}_difference_points": round(xstilts[metric] - reference[metric], 2)}
        write_results(args.output, results)


if __name__ == "__main__":
    main()
