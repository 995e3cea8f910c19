"""The phases of the protocol as skip/resume/start units: a phase directory holding `DONE` is finished;
one holding a checkpoint resumes; otherwise it starts. `DONE` is written last, atomically."""

from __future__ import annotations

import csv
import os
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerBase

from xstilts.config import EvalData, TaskData, TaskMixing, TrainConfig
from xstilts.cpu import adaptive_threads
from xstilts.distributed import current_ranks
from xstilts.embedded_model import resolve_model
from xstilts.errors import XstiltsError
from xstilts.evaluation import inference_weights, predict
from xstilts.features import Features
from xstilts.manifest import machine, read_json, write_json
from xstilts.memory import peak_rss_mb, release_free_heap
from xstilts.model import HeadSpec, MultiHeadModel, load_checkpoint, load_encoder, load_trained, read_heads
from xstilts.precision import device_kind, pick_device, resolve_precision
from xstilts.task_types import read_split, score_outcomes, task_kind, task_type
from xstilts.tasks.readers import SplitData, check_available, reads_local
from xstilts.task_types.masked_lm import Pieces
from xstilts.tasks.registry import TaskRegistry
from xstilts.tasks.spec import TaskSpec
from xstilts.vocab import VocabTrim
from xstilts.training import BEST_DIR, CHECKPOINT_DIR, TrainTask, train_phase

DONE_FILE = "DONE"
RESULT_FILE = "result.json"
SPILLED_EMBEDDINGS_FILE = "full-embeddings.safetensors"  # while a trimmed phase trains
EVAL_SUBSAMPLE_SEED = 0


@dataclass
class Context:
    """What every phase of a run shares: model, tokenizer, tasks, data folder, device and precision."""

    model: str
    registry: TaskRegistry
    data_dir: Path | None
    max_length: int
    precision: str
    device: torch.device
    tokenizer: PreTrainedTokenizerBase
    pooling: str = "mean"
    trim_vocab: bool = True
    max_positions: int | None = None  # the longest sequence the model encodes, where its config says
    tokenize_seconds: float = 0.0  # reading and tokenizing splits, summed over this context's life
    _splits: dict = field(default_factory=dict)

    @classmethod
    def create(cls, model: str, registry: TaskRegistry, data_dir: Path | None, max_length: int, precision: str,
               pooling: str = "mean") -> Context:
        """Resolve the model (converting the embedded one on first use) and load its tokenizer."""
        path = resolve_model(model)
        device = pick_device()
        try:
            config = AutoConfig.from_pretrained(path)
            tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError, KeyError) as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise XstiltsError(f"{model}: cannot load this model (no such directory, an unknown Hub name, or "
                               f"missing or damaged files): {first}") from None
        positions = getattr(config, "max_position_embeddings", None)
        limit = None
        if positions:
            limit = positions - 2 if config.model_type in ("xlm-roberta", "roberta", "camembert") else positions
            if max_length > limit:
                raise XstiltsError(f"max_length {max_length} exceeds what {model} can encode ({limit} pieces)")
        return cls(path, registry, data_dir, max_length, resolve_precision(precision, device), device, tokenizer,
                   pooling, max_positions=limit)

    def split(self, task: str, split: str, language: str, source: str = "auto") -> tuple[SplitData, Features]:
        """Rows of one task/split/language, read and tokenized once per context."""
        key = (task, split, language, source)
        if key not in self._splits:
            started = time.perf_counter()
            spec = self.registry.get(task)
            if spec.max_length and self.max_positions and spec.max_length > self.max_positions:
                raise XstiltsError(f"task {task!r}: max_length {spec.max_length} exceeds what {self.model} can encode "
                                   f"({self.max_positions} pieces)")
            data = read_split(spec, split, language, self.data_dir, source)
            self._splits[key] = (data, task_type(spec.type).featurize(
                data.examples, self.tokenizer, spec.max_length or self.max_length, spec, language))
            self.tokenize_seconds += time.perf_counter() - started
        return self._splits[key]

    def rows(self, data: TaskData, seed: int, split: str | None = None) -> tuple[Features, list[SplitData]]:
        """All languages of a task's split, concatenated, capped at `max_examples` (a per-seed subsample)."""
        spec = self.registry.get(data.task)
        parts = [self.split(data.task, split or data.split, lang, data.source) for lang in data.languages or spec.languages]
        features = Features.concatenate([f for _, f in parts])
        if data.max_examples:
            features = features.sample(data.max_examples, np.random.default_rng([seed, 104729]))
        return features, [split_data for split_data, _ in parts]


def check_plan(registry: TaskRegistry, data_dir: Path | None, training: list[TaskData], target: str,
               evaluate: list[EvalData]) -> None:
    """Before any phase starts: every task, split, language and local file exists and every local file is
    read through (decoded and parsed: a bad byte in an evaluation file stops the run before training, not
    after), no task of a type without training data (retrieval) is trained, no trained-only task (masked LM)
    is the target or evaluated, and every evaluation task scored by a head has the target head's type and
    labels. Hub sources are checked, not read."""
    seen = set()
    for data in [*training, *evaluate]:
        spec = registry.get(data.task)
        splits = [data.split]
        if data in training and "dev" in spec.splits and data.split != "dev":
            splits.append("dev")
        for split in splits:
            for language in data.languages or spec.languages:
                check_available(spec, split, language, data_dir, data.source)
                key = (data.task, split, language, data.source)
                if reads_local(spec.for_language(language), data_dir, data.source) and key not in seen:
                    seen.add(key)
                    read_split(spec, split, language, data_dir, data.source)
    for data in training:
        kind = task_type(registry.get(data.task).type)
        if not kind.trainable:
            raise XstiltsError(f"task {data.task!r} is a {kind.name} task: it has no training data; list it under "
                               "`evaluate`")
    head = registry.get(target)
    if not task_type(head.type).evaluated:
        raise XstiltsError(f"task {target!r} ({head.type}) is trained, not evaluated: train it in an intermediate "
                           "phase, not as the target")
    for data in evaluate:
        spec = registry.get(data.task)
        kind = task_type(spec.type)
        if not kind.evaluated:
            raise XstiltsError(f"task {data.task!r} ({spec.type}) is trained, not evaluated: list it in an "
                               "intermediate phase, not under `evaluate`")
        if kind.trainable and (spec.type, spec.labels) != (head.type, head.labels):
            raise XstiltsError(f"task {data.task!r} ({spec.type}) has labels {spec.labels}; the {target!r} head it "
                               f"would be scored with ({head.type}) has {head.labels}")


def is_done(directory: Path) -> bool:
    """Whether a phase directory holds a finished result: a DONE marker and a readable result.json (a phase's
    result: an object with its `kind`, not `{}` or `[]`). It only reads, so read-only commands (status, dry
    runs, reports) change nothing."""
    if not (directory / DONE_FILE).exists():
        return False
    try:
        read_result(directory)
        return True
    except XstiltsError:
        return False


def discard_unreadable(directory: Path) -> None:
    """Before a phase is computed: a DONE marker left without a readable result.json (deleted, truncated) is
    removed, with a warning."""
    if (directory / DONE_FILE).exists() and not is_done(directory):
        print(f"xstilts: warning: {directory}: DONE without a readable {RESULT_FILE}; computing this phase again",
              file=sys.stderr)
        (directory / DONE_FILE).unlink(missing_ok=True)


class _PartClock:
    """A node's wall time (`seconds`) and its parts: reading and tokenizing data, loading the model (up to
    `loaded()`), and the rest (training or scoring, saving)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.started = time.perf_counter()
        self.tokenize_before = ctx.tokenize_seconds
        self.load_model = 0.0

    def loaded(self) -> None:
        tokenize = self.ctx.tokenize_seconds - self.tokenize_before
        self.load_model = time.perf_counter() - self.started - tokenize

    def result(self) -> dict:
        total = time.perf_counter() - self.started
        tokenize = self.ctx.tokenize_seconds - self.tokenize_before
        return {"seconds": round(total, 2), "seconds_by_part": {
            "read_and_tokenize": round(tokenize, 2), "load_model": round(self.load_model, 2),
            "compute": round(total - tokenize - self.load_model, 2)}}


def _finish(ctx: Context, directory: Path, result: dict) -> dict:
    """Write the result with the machine that computed it, then the DONE marker (last, atomically); with
    several processes this is rank 0's work, and the others wait for it at a barrier."""
    result["machine"] = machine(device_kind(ctx.device))
    write_json(directory / RESULT_FILE, result)
    mark_done(directory)
    current_ranks().barrier()
    return result


def mark_done(directory: Path) -> None:
    """Write the DONE marker of a phase whose result.json is written (atomically, so last)."""
    tmp = directory / (DONE_FILE + ".tmp")
    tmp.write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    os.replace(tmp, directory / DONE_FILE)


def _provenance(splits: list[SplitData]) -> list[dict]:
    return [{"task": s.task, "split": s.split, "language": s.language, "source": s.source, "sha256": s.sha256,
             "examples": len(s.examples), "skipped_unlabelled": s.skipped_unlabelled} for s in splits]


def _carried_heads(parent: Path, heads: dict[str, HeadSpec], named: str | None = None) -> dict[str, str]:
    """For carry 'encoder_and_head': new head -> the parent's head `named`, or else the parent's head of the
    same name, type and label list, or else its only head of the same type and label list."""
    saved = read_heads(parent)
    if named is not None:
        (name, wanted), = heads.items()
        if saved.get(named) != wanted:
            found = f"a {saved[named].type} head with labels {list(saved[named].labels)}" if named in saved else "none"
            raise XstiltsError(f"carry_head {named!r}: head {name!r} needs an intermediate head {named!r} of type "
                               f"{wanted.type} with labels {list(wanted.labels)}; found {found}")
        return {name: named}
    carried = {}
    for name, wanted in heads.items():
        matches = [name] if saved.get(name) == wanted else [old for old, spec in saved.items() if spec == wanted]
        if len(matches) != 1:
            raise XstiltsError(
                f"carry 'encoder_and_head': head {name!r} needs exactly one intermediate head with labels "
                f"{list(wanted.labels)}, found {matches or 'none'}"
            )
        carried[name] = matches[0]
    return carried


def _head_name(spec: TaskSpec) -> str:
    """A task's head in a phase: its own name, or its type's shared head (masked LM: one transform over all text)."""
    return task_type(spec.type).shared_head or spec.name


def _examples_per_task(tasks: list[TaskData], train_tasks: list[TrainTask]) -> dict[str, int]:
    """What a cap counts, per task (summed when a task is listed twice, e.g. per language): examples, a span-QA
    question (not its windows), a distinct masked-LM text sequence."""
    counts: dict[str, int] = {}
    for data, task in zip(tasks, train_tasks):
        counts[data.task] = counts.get(data.task, 0) + len(np.unique(task.train.units))
    return counts


def train_node(ctx: Context, out_dir: Path, *, tasks: list[TaskData], train: TrainConfig, seed: int,
               parent: Path | None = None, carry: str | None = None, carry_head: str | None = None,
               mixing: TaskMixing = TaskMixing(), description: str = "train", log: str = "none") -> dict:
    """Train a head per task (masked_lm tasks share one) on top of `parent`'s encoder when given; the selected
    model is saved in out_dir (`log`: a tracker of the training, in out_dir/logs)."""
    if current_ranks().decided_by_main(is_done(out_dir)):
        return read_result(out_dir)
    discard_unreadable(out_dir)
    clock = _PartClock(ctx)
    train_tasks, provenance, specs = [], [], [ctx.registry.get(data.task) for data in tasks]
    for data, spec in zip(tasks, specs):
        features, splits = ctx.rows(data, seed)
        dev = None
        if "dev" in spec.splits and data.split != "dev" and task_type(spec.type).evaluated:
            dev_rows = data.model_copy(update={"max_examples": train.dev_max_examples})
            dev, dev_splits = ctx.rows(dev_rows, EVAL_SUBSAMPLE_SEED, split="dev")
            splits += dev_splits
        train_tasks.append(TrainTask(_head_name(spec), task_kind(spec), features, dev, data.loss_weight))
        provenance += _provenance(splits)
    heads = {task.head: HeadSpec(spec.type, tuple(spec.labels)) for spec, task in zip(specs, train_tasks)}
    ranks = current_ranks()
    torch.manual_seed(seed)
    if parent is None:
        model = MultiHeadModel(load_encoder(ctx.model, train.dropout, train.attention_dropout), heads, train.dropout,
                               ctx.pooling)
    else:
        carried = _carried_heads(parent, heads, carry_head) if carry == "encoder_and_head" else {}
        model = load_checkpoint(ctx.model, parent, heads, carried, train.dropout, ctx.pooling, train.attention_dropout)
    clock.loaded()
    pad_id = ctx.tokenizer.pad_token_id
    trim = None
    if ctx.trim_vocab:
        everything = [t.train for t in train_tasks] + [t.dev for t in train_tasks if t.dev is not None]
        trim = VocabTrim.from_features(everything, model.encoder.config.vocab_size, ctx.tokenizer.all_special_ids)
        train_tasks = [replace(t, train=trim.remap(t.train), dev=t.dev and trim.remap(t.dev)) for t in train_tasks]
        out_dir.mkdir(parents=True, exist_ok=True)
        spill = out_dir / SPILLED_EMBEDDINGS_FILE.replace(".", f".rank{ranks.rank}.", 1) if ranks.world > 1 else \
            out_dir / SPILLED_EMBEDDINGS_FILE
        trim.shrink(model, spill)
        pad_id = int(trim.full_to_trimmed[pad_id])
    if any(t.kind.masks_pieces for t in train_tasks):
        pieces = Pieces.of(ctx.tokenizer, trim.full_to_trimmed if trim is not None else None)
        train_tasks = [replace(t, masking=pieces) if t.kind.masks_pieces else t for t in train_tasks]
    metrics = train_phase(model, train_tasks, train, out_dir, seed=seed, pad_id=pad_id,
                          precision=ctx.precision, device=ctx.device, mixing=mixing,
                          description=description, log=log)
    if trim is not None:
        release_free_heap()  # the heap left fragmented by training, before the full matrix comes back
        trim.expand(model, spill)
        metrics["vocabulary_in_training"] = len(trim.kept)
    if not ranks.main:  # rank 0 writes the phase; the others read it
        ranks.barrier()
        return read_result(out_dir)
    model.save(out_dir)
    for leftover in (CHECKPOINT_DIR, BEST_DIR):
        shutil.rmtree(out_dir / leftover, ignore_errors=True)
    return _finish(ctx, out_dir, {
        "kind": "train", "tasks": [d.model_dump() for d in tasks],
        "train_examples": _examples_per_task(tasks, train_tasks),
        "seed": seed, "precision": ctx.precision, "data": provenance, "metrics": metrics,
        **clock.result(), "peak_rss_mb": round(peak_rss_mb(), 1),
    })


def eval_node(ctx: Context, out_dir: Path, *, trained: Path | None, head: str | None, data: EvalData) -> dict:
    """Score every language of an evaluation set with one head of the `trained` model, or for a retrieval task
    with its encoder (`trained` None: the base model's); writes per-example predictions. A capped evaluation
    set is the same subsample for every run and seed, so results stay paired."""
    ranks = current_ranks()
    if ranks.decided_by_main(is_done(out_dir)):
        return read_result(out_dir)
    if not ranks.main:  # evaluation is rank 0's alone
        ranks.barrier()
        return read_result(out_dir)
    discard_unreadable(out_dir)
    clock = _PartClock(ctx)
    spec = ctx.registry.get(data.task)
    kind = task_kind(spec)
    scorer = _scorer(ctx, spec, trained, head)
    clock.loaded()
    languages, provenance = {}, []
    with adaptive_threads(ctx.device) as threads:
        for language in data.languages or spec.languages:
            if threads is not None:
                threads.adapt(force=not languages)
            features, splits = ctx.rows(data.model_copy(update={"languages": [language]}), EVAL_SUBSAMPLE_SEED)
            outcomes = kind.outcomes(scorer(features), features, spec.labels or None)
            _write_predictions(out_dir / "predictions" / f"{language}.csv", outcomes)
            found = score_outcomes(kind, outcomes)
            languages[language] = {"metric": kind.metrics[0], "score": found[kind.metrics[0]], "scores": found,
                                   "n": len(outcomes)}
            provenance += _provenance(splits)
            print(f"eval {data.task}/{data.split} {language}: "
                  + ", ".join(f"{m} {v:.4f}" for m, v in found.items()) + f" (n={len(outcomes)})", file=sys.stderr)
    average = float(np.mean([value["score"] for value in languages.values()]))
    timings = clock.result()
    return _finish(ctx, out_dir, {
        "kind": "eval", "task": data.task, "split": data.split, "head": head, "metric": kind.metrics[0],
        "languages": languages, "average": average, "data": provenance, **timings,
        "pairs_per_second": round(sum(v["n"] for v in languages.values()) / timings["seconds"], 1),
    })


def _scorer(ctx: Context, spec, trained: Path | None, head: str | None) -> Callable[[Features], np.ndarray]:
    """Predictions for one language's features: a retrieval task's nearest rows from an encoder, else the
    trained model's head (which must be of the task's type and labels)."""
    kind = task_type(spec.type)
    if not kind.trainable:
        model = load_trained(ctx.model, trained) if trained is not None else None
        encoder = model.encoder if model is not None else load_encoder(ctx.model)
        encoder = inference_weights(encoder, ctx.precision).to(ctx.device)
        pooling = model.pooling if model is not None else ctx.pooling
        return lambda features: kind.retrieve(encoder, features, ctx.tokenizer.pad_token_id, pooling, ctx.precision,
                                              ctx.device)
    from xstilts.hf_interop import is_hf_checkpoint, load_imported  # a Hugging Face folder scored with its own head

    loaded = load_imported(trained, spec) if is_hf_checkpoint(trained) else load_trained(ctx.model, trained)
    model = inference_weights(loaded, ctx.precision).to(ctx.device)
    if model.specs[head] != HeadSpec(spec.type, tuple(spec.labels)):
        raise XstiltsError(f"task {spec.name!r} ({spec.type}) has labels {spec.labels}, head {head!r} "
                           f"({model.specs[head].type}) has {model.labels[head]}")
    return lambda features: predict(model, head, features, ctx.tokenizer.pad_token_id, ctx.precision, ctx.device)


def _write_predictions(path: Path, outcomes: list[dict]) -> None:
    """Per-example outcomes (see `TaskType.outcomes`) as CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, list(outcomes[0]))
        writer.writeheader()
        writer.writerows(outcomes)


def read_result(directory: Path) -> dict:
    """The result.json of a finished phase; a missing or damaged one, or one that is not a phase's result (no
    `kind`), is one line saying to delete the phase's folder."""
    fix = f"delete {directory} to compute this phase again"
    result = read_json(directory / RESULT_FILE, fix)
    if result.get("kind") not in ("train", "eval"):
        raise XstiltsError(f"{directory / RESULT_FILE}: not a phase's result (no 'kind' train or eval); {fix}")
    return result
