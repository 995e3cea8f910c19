"""Training throughput: xstilts vs the Hugging Face Trainer as `run_xnli.py` configures it by default
(padding to max length, fp32: `reference`) and as a performance-aware user configures it (bf16 where
supported, dynamic padding, length-grouped batches, SDPA: `aware`; `aware+compile` adds torch_compile), on
the embedded model and the local MNLI slice, same hyperparameters and number of optimizer steps. Each side
and seed runs in its own subprocess so its peak RSS is its own.

    python benchmarks/bench_train.py --short      # quick check (20 steps, 640 pairs, one seed)
    python benchmarks/bench_train.py              # full figures (1 epoch of the 8,999-pair slice; xstilts
                                                  # at seeds 13, 14, 15, the reference at seed 13: ~32 min)

xstilts' trained model of the first seed is kept in runs/bench-train (--model-out) for bench_eval.py.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DATA_DIR, TrainerAdapter, accuracy, examples, fresh_model,  # noqa: E402
                    matmul_peak_tflops, non_embedding_parameters, predict_in_order, write_results)

from xstilts.memory import peak_rss_mb  # noqa: E402

LR, BATCH, MAX_LENGTH, WARMUP, DECAY = 5e-5, 32, 128, 0.1, 0.01


REFERENCES = {
    # the setup run_xnli.py gives a beginner: fp32, every batch padded to max_length
    "reference": {"padding": "max_length", "group_by_length": False, "bf16": False, "compile": False},
    # the HF Trainer as a performance-aware user configures it: bf16 where the CPU supports it, dynamic
    # padding (DataCollatorWithPadding), length-grouped batches, SDPA attention (the model's default)
    "aware": {"padding": False, "group_by_length": True, "bf16": None, "compile": False},
    "aware+compile": {"padding": False, "group_by_length": True, "bf16": None, "compile": True},
}


def run_reference(steps: int, seed: int, setup: str = "reference") -> dict:
    """The HF Trainer in one of the REFERENCES setups, on the same model function, data and steps."""
    import datasets
    from transformers import AutoTokenizer, DataCollatorWithPadding, Trainer, TrainingArguments

    from xstilts.embedded_model import ensure_default_model
    from xstilts.precision import pick_device, resolve_precision

    options = REFERENCES[setup]
    bf16 = options["bf16"] if options["bf16"] is not None else resolve_precision("auto", pick_device()) == "bf16"
    tokenizer = AutoTokenizer.from_pretrained(str(ensure_default_model()))

    def encode(rows):
        encoded = tokenizer([r.text_a for r in rows], [r.text_b for r in rows], padding=options["padding"],
                            max_length=MAX_LENGTH, truncation=True)
        return datasets.Dataset.from_dict({**encoded, "labels": [r.label for r in rows]})

    train, dev = encode(examples("mnli", "train")), encode(examples("mnli", "dev"))
    model = TrainerAdapter(fresh_model(seed), "mnli")
    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, per_device_train_batch_size=BATCH, per_device_eval_batch_size=8,
                                 learning_rate=LR, max_steps=steps, warmup_steps=int(WARMUP * steps), weight_decay=DECAY,
                                 max_grad_norm=1.0, save_strategy="no", report_to=[], seed=seed, use_cpu=True,
                                 logging_steps=max(1, steps // 5), disable_tqdm=True, bf16=bf16,
                                 train_sampling_strategy="group_by_length" if options["group_by_length"] else "random",
                                 torch_compile=options["compile"])
        collator = DataCollatorWithPadding(tokenizer) if not options["padding"] else None
        trainer = Trainer(model=model, args=args, train_dataset=train, data_collator=collator)
        seconds = trainer.train().metrics["train_runtime"]
        dev_predictions = predict_in_order(model, dev, collator).argmax(-1)
    seen = steps * BATCH
    real_tokens = float(np.mean([sum(mask) for mask in train["attention_mask"]]) * seen)
    padded = seen * MAX_LENGTH if options["padding"] else real_tokens
    return {"seconds": seconds, "examples": seen, "real_tokens": real_tokens, "padded_tokens": padded,
            "dev_accuracy": accuracy(dev_predictions, dev["labels"]), "setup": setup, "bf16": bf16,
            "non_embedding_parameters": non_embedding_parameters(model.model.encoder), "peak_rss_mb": peak_rss_mb()}


def run_xstilts(steps: int, seed: int, model_out: Path) -> dict:
    """xstilts' default path (bf16 autocast where supported, dynamic padding, length grouping, vocabulary
    trimming, its CPU attention, activation checkpointing on the CPU); the trained model goes to `model_out`."""
    from xstilts.config import TaskData, TrainConfig
    from xstilts.phases import Context, train_node
    from xstilts.tasks import load_registry

    ctx = Context.create("embedded", load_registry(), DATA_DIR, MAX_LENGTH, "auto")
    config = TrainConfig(max_steps=steps, lr=LR, batch_size=BATCH, warmup_ratio=WARMUP, weight_decay=DECAY,
                         eval_every=steps, select_best=False, checkpoint_every=10**9)
    shutil.rmtree(model_out, ignore_errors=True)  # a finished phase directory would be reused, not timed
    result = train_node(ctx, model_out, tasks=[TaskData(task="mnli")], train=config, seed=seed,
                        description="xstilts")
    metrics = result["metrics"]
    return {"seconds": metrics["train_seconds"], "examples": metrics["train_examples"],
            "real_tokens": metrics["tokens_per_second"] * metrics["train_seconds"],
            "dev_accuracy": metrics["history"][-1]["dev"]["mnli"], "precision": result["precision"],
            "peak_rss_mb": peak_rss_mb()}


def combine(runs: list[dict]) -> dict:
    """One side over its seeds: summed examples, tokens and seconds, the largest peak RSS, mean dev accuracy."""
    side = {key: sum(run[key] for run in runs) for key in ("seconds", "examples", "real_tokens")}
    accuracies = [run["dev_accuracy"] for run in runs]
    return {**runs[0], **side, "peak_rss_mb": max(run["peak_rss_mb"] for run in runs),
            "dev_accuracy": float(np.mean(accuracies)), "dev_accuracy_per_seed": accuracies}


def summarise(sides: dict[str, dict]) -> dict:
    """Throughputs, FLOP/s against the measured matmul peaks, and xstilts' ratios against every reference."""
    import torch

    peaks = {"fp32": matmul_peak_tflops(torch.float32), "bf16": matmul_peak_tflops(torch.bfloat16)}
    parameters = next(side["non_embedding_parameters"] for name, side in sides.items() if name != "xstilts")
    for side in sides.values():
        side["non_embedding_parameters"] = parameters  # the same model on every side
        side["examples_per_second"] = side["examples"] / side["seconds"]
        side["real_tokens_per_second"] = side["real_tokens"] / side["seconds"]
        # 6 FLOPs per parameter per real token (forward + backward; attention and recomputation not counted)
        side["achieved_tflops"] = 6 * parameters * side["real_tokens_per_second"] / 1e12
        side["fraction_of_peak"] = {k: side["achieved_tflops"] / v for k, v in peaks.items()}
    ours = sides["xstilts"]
    ratios = {name: {"train_speedup": ours["examples_per_second"] / side["examples_per_second"],
                     "rss_ratio": ours["peak_rss_mb"] / side["peak_rss_mb"],
                     "dev_accuracy_delta": ours["dev_accuracy"] - side["dev_accuracy"]}
              for name, side in sides.items() if name != "xstilts"}
    return {"sides": sides, "matmul_peak_tflops": peaks, "against": ratios}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="20 optimizer steps instead of one epoch")
    parser.add_argument("--steps", type=int, help="optimizer steps (default: 20 short, 282 = one epoch full)")
    parser.add_argument("--side", choices=[*REFERENCES, "xstilts"], help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=13, help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help="xstilts' seeds, comma-separated (default: 13 short, 13,14,15 full): "
                                        "dev accuracy after one epoch varies by about a point between seeds")
    parser.add_argument("--reference-seeds", default="13", help="each reference's seeds (about 18 min each, full)")
    parser.add_argument("--references", default="reference,aware",
                        help=f"which references to run, comma-separated, of {', '.join(REFERENCES)}")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/train.json"))
    parser.add_argument("--model-out", type=Path, default=Path("runs/bench-train"),
                        help="where xstilts' model of the first seed goes (bench_eval.py --model-dir takes it)")
    args = parser.parse_args()
    steps = args.steps or (20 if args.short else 282)
    if args.side:
        result = (run_xstilts(steps, args.seed, args.model_out) if args.side == "xstilts"
                  else run_reference(steps, args.seed, args.side))
        print(json.dumps(result))
        return
    seeds = {**{name: args.reference_seeds for name in args.references.split(",")},
             "xstilts": args.seeds or ("13" if args.short else "13,14,15")}
    sides = {}
    for side, side_seeds in seeds.items():
        runs = []
        for index, seed in enumerate(int(s) for s in side_seeds.split(",")):
            started = time.perf_counter()
            model_out = args.model_out if index == 0 else args.model_out.with_name(f"{args.model_out.name}-seed{seed}")
            output = subprocess.run([sys.executable, __file__, "--side", side, "--steps", str(steps), "--seed",
                                     str(seed), "--model-out", str(model_out)], check=True, stdout=subprocess.PIPE,
                                    text=True).stdout
            runs.append(json.loads(output.strip().splitlines()[-1]))
            print(f"{side} seed {seed}: {time.perf_counter() - started:.0f}s", file=sys.stderr)
        sides[side] = combine(runs)
    write_results(args.out, {"mode": "short" if args.short else "full", "steps": steps, "seeds": seeds,
                             **summarise(sides)})


if __name__ == "__main__":
    main()
