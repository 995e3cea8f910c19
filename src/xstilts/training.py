"""One training phase as a plain loop: sampled batches, AdamW, warmup + linear decay, clipping,
accumulation, periodic dev evaluation with best-state selection, and exact resume from checkpoints."""

from __future__ import annotations

import math
import os
import pickle
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from tqdm import tqdm
from safetensors.torch import save_file
from transformers import get_linear_schedule_with_warmup

from xstilts.attention import attention_implementation, training_attention
from xstilts.memory import activation_checkpointing, needs_activation_checkpointing
from xstilts.averaging import WeightAverage
from xstilts.config import TaskMixing, TrainConfig
from xstilts.cpu import CpuThreads, adaptive_threads
from xstilts.distributed import Ranks, current_ranks
from xstilts.errors import XstiltsError
from xstilts.evaluation import predict
from xstilts.features import Features, collate, length_grouped_batches
from xstilts.model import WEIGHTS_FILE, MultiHeadModel, load_weights
from xstilts.precision import autocast
from xstilts.task_types import TaskType, score_outcomes
from xstilts.task_types.masked_lm import Pieces, mask
from xstilts.tracking import CURVE_POINTS, LOG_DIR, PhaseLog

CHECKPOINT_DIR = "checkpoint"
BEST_DIR = "best"
AVERAGE_FILE = "average.safetensors"
STATE_FILE = "training_state.pt"
STATE_KEYS = ("fingerprint", "optimizer", "scheduler", "rng", "state")  # what a training state holds


@dataclass
class TrainTask:
    """Training rows of one task, the head they train (of the task's type), and optional dev rows for model
    selection."""

    head: str
    kind: TaskType
    train: Features
    dev: Features | None = None
    weight: float = 1.0  # the task's loss is multiplied by it
    masking: Pieces | None = None  # masked LM: batches are masked anew each time, with these pieces


@dataclass
class TrainState:
    """Everything besides the weights that a resumed run needs to continue exactly."""

    step: int = 0
    best_score: float | None = None
    best_step: int | None = None
    evals_without_gain: int = 0
    history: list[dict] = field(default_factory=list)
    curve: list[dict] = field(default_factory=list)  # the training curve (`curve_point`), ~CURVE_POINTS points
    seconds: float = 0.0
    examples: int = 0
    tokens: int = 0
    loss_ema: float | None = None
    averaged: int = 0


def task_weights(sizes: list[int], sampling: str, temperature: float) -> np.ndarray:
    """Probability of drawing each task's next batch: proportional, temperature-scaled or uniform."""
    sizes_array = np.asarray(sizes, dtype=np.float64)
    power = {"proportional": 1.0, "temperature": 1.0 / temperature, "uniform": 0.0}[sampling]
    weights = sizes_array**power
    return weights / weights.sum()


def _task_batches(lengths: np.ndarray, batch_size: int, seed: int, task_index: int) -> Iterator[np.ndarray]:
    """Endless stream of one task's length-grouped batches, reshuffled every pass with its own seed."""
    for epoch in range(1_000_000):
        rng = np.random.default_rng([seed, task_index, epoch])
        yield from length_grouped_batches(lengths, batch_size, rng)


def build_schedule(tasks: list[TrainTask], batch_size: int, micro_batches: int, seed: int, sampling: str,
                   temperature: float) -> list[tuple[int, np.ndarray]]:
    """The full, deterministic sequence of (task index, row indices) micro-batches of a phase."""
    streams = [_task_batches(task.train.lengths, batch_size, seed, i) for i, task in enumerate(tasks)]
    if len(tasks) == 1:
        choices = np.zeros(micro_batches, dtype=np.int64)
    else:
        weights = task_weights([len(task.train) for task in tasks], sampling, temperature)
        choices = np.random.default_rng([seed, 7919]).choice(len(tasks), size=micro_batches, p=weights)
    return [(int(choice), next(streams[choice])) for choice in choices]


def count_steps(tasks: list[TrainTask], config: TrainConfig) -> tuple[int, int]:
    """(optimizer steps in the phase, optimizer steps per epoch)."""
    per_epoch = sum(math.ceil(len(task.train) / config.batch_size) for task in tasks)
    steps_per_epoch = max(1, per_epoch // config.grad_accumulation)
    total = config.max_steps or max(1, math.ceil(config.epochs * steps_per_epoch))
    return total, steps_per_epoch


def _optimizer(model: MultiHeadModel, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim == 1 else decay).append(parameter)
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype == torch.float32 for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=config.lr, fused=fused)


def _save_checkpoint(out_dir: Path, model: MultiHeadModel, optimizer, scheduler, state: TrainState,
                     fingerprint: dict, average: WeightAverage | None, rng: dict[str, list[torch.Tensor]]) -> None:
    """Atomically replace the phase's checkpoint (weights apart from the training state); `rng`: every rank's
    random states, indexed by rank (`rank_rng_states`)."""
    tmp = out_dir / (CHECKPOINT_DIR + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    if average is not None and average.count:
        state.averaged = average.count
        save_file(average.sums, str(tmp / AVERAGE_FILE))
    torch.save(
        {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), **rng,
         "state": state.__dict__, "fingerprint": fingerprint},
        tmp / STATE_FILE,
    )
    final = out_dir / CHECKPOINT_DIR
    old = out_dir / (CHECKPOINT_DIR + ".old")
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_training_state(path: Path) -> dict:
    """A checkpoint's training state as data: tensors, numbers, strings and containers only (PyTorch's
    weights_only loader). A file that would run code when unpickled, or a damaged one, is refused."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise XstiltsError(f"{path}: refused: the file holds objects that would run code when loaded, not just "
                           f"data; delete {path.parent} to start this phase over") from None
    except (RuntimeError, EOFError, OSError) as error:
        raise XstiltsError(f"{path}: unreadable checkpoint ({str(error).splitlines()[0]}); delete {path.parent} "
                           "to start this phase over") from None


def rank_rng_states(ranks: Ranks, device: torch.device) -> dict[str, list[torch.Tensor]]:
    """Every rank's random states (its dropout stream), indexed by rank, for rank 0 to save (a collective):
    `rng` the CPU generator's and, on a GPU, `cuda_rng` the device's (dropout there draws from it)."""
    states = {"rng": ranks.gather(torch.get_rng_state())}
    if device.type == "cuda":
        states["cuda_rng"] = ranks.gather(torch.cuda.get_rng_state(device))
    return states


def _own_state(saved: object, ranks: Ranks, path: Path) -> torch.Tensor:
    """This rank's state from a per-rank list; a single state (a checkpoint from before the list) serves a
    single process only."""
    states = [saved] if isinstance(saved, torch.Tensor) else saved
    if not isinstance(states, list) or len(states) != ranks.world or \
            not all(isinstance(value, torch.Tensor) for value in states):
        raise XstiltsError(f"{path}: holds no random state for each of {ranks.world} process(es); delete "
                           f"{path.parent} to start this phase over")
    return states[ranks.rank]


def restore_rng(saved: dict, ranks: Ranks, path: Path, device: torch.device) -> None:
    """Set this rank's own random states from a training state's `rng` (and, on a GPU, `cuda_rng`: a
    checkpoint made on a CPU has none, and its GPU resume draws other dropout masks)."""
    torch.set_rng_state(_own_state(saved["rng"], ranks, path))
    if device.type == "cuda" and "cuda_rng" in saved:
        torch.cuda.set_rng_state(_own_state(saved["cuda_rng"], ranks, path), device)


def _resume(out_dir: Path, model: MultiHeadModel, optimizer, scheduler, fingerprint: dict,
            average: WeightAverage | None, ranks: Ranks, device: torch.device) -> TrainState:
    """Load the checkpoint if there is one (and it was made with the same settings), else a fresh state; a
    state of the wrong structure or damaged weights are one line saying to delete the checkpoint."""
    directory = out_dir / CHECKPOINT_DIR
    path, restart = directory / STATE_FILE, f"delete {directory} to start this phase over"
    if not path.exists():
        return TrainState()
    saved = load_training_state(path)
    missing = [key for key in STATE_KEYS if key not in saved] if isinstance(saved, dict) else list(STATE_KEYS)
    if missing:
        raise XstiltsError(f"{path}: not a training state (no {', '.join(missing)}); {restart}")
    if saved["fingerprint"] != fingerprint:
        raise XstiltsError(f"{directory}: checkpoint was made with other settings; delete it to start over")
    weights = load_weights(directory / WEIGHTS_FILE, restart, "checkpoint weights")
    try:
        model.load_state_dict(weights)
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        restore_rng(saved, ranks, path, device)
        state = TrainState(**saved["state"])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, RuntimeError) as error:
        first = " ".join(str(error).split())[:160] or type(error).__name__
        raise XstiltsError(f"{path}: a damaged training state ({first}); {restart}") from None
    if average is not None and state.averaged:
        average.load(load_weights(directory / AVERAGE_FILE, restart, "averaged weights"), state.averaged)
    return state


def evaluate_dev(model: MultiHeadModel, tasks: list[TrainTask], pad_id: int, precision: str, device: torch.device) -> dict[str, float]:
    """Each task's dev score (its type's metric), for the tasks that have dev rows."""
    scores = {}
    for task in tasks:
        if task.dev is not None:
            predictions = predict(model, task.head, task.dev, pad_id, precision, device)
            scores[task.head] = score_outcomes(task.kind, task.kind.outcomes(predictions, task.dev, None))[task.kind.metrics[0]]
    model.train()
    return scores


def curve_point(state: TrainState, lr: float) -> dict:
    """One point of the training curve: step, training loss (its moving average, as in the history), this step's
    learning rate, and examples and pieces per second since the phase began."""
    seconds = max(state.seconds, 1e-9)
    return {"step": state.step, "loss": state.loss_ema, "lr": lr, "examples_per_second":
            round(state.examples / seconds, 2), "tokens_per_second": round(state.tokens / seconds, 1)}


def train_phase(model: MultiHeadModel, tasks: list[TrainTask], config: TrainConfig, out_dir: Path, *, seed: int,
                pad_id: int, precision: str, device: torch.device,
                mixing: TaskMixing = TaskMixing(), description: str = "train", log: str = "none") -> dict:
    """Train `model` on `tasks`, resuming from `out_dir/checkpoint` if present; returns the phase's metrics.
    `log`: also write the curve and dev scores to a tracker in `out_dir/logs` (see xstilts.tracking).

    The model left in memory is the selected one: the mean of the snapshots when `average_from` is set,
    else the best on dev when `select_best` and dev rows exist, else the last.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpointing = config.activation_checkpointing
    if checkpointing is None:
        length = max(int(task.train.lengths.max()) for task in tasks)
        sequences = config.batch_size * max(task.train.choices for task in tasks)
        checkpointing = device.type == "cpu" and needs_activation_checkpointing(
            model.encoder, sequences, length, 2 if precision == "bf16" else 4)
    with attention_implementation(model.encoder, training_attention(config.attention, device)), \
            activation_checkpointing(model.encoder, checkpointing), adaptive_threads(device) as threads, \
            PhaseLog(log, out_dir / LOG_DIR, description, current_ranks().main) as tracker:
        return _train(model, tasks, config, out_dir, seed=seed, pad_id=pad_id, precision=precision, device=device,
                      sampling=mixing.sampling, temperature=mixing.temperature, description=description,
                      threads=threads, tracker=tracker)


def _train(model: MultiHeadModel, tasks: list[TrainTask], config: TrainConfig, out_dir: Path, *, seed: int,
           pad_id: int, precision: str, device: torch.device, sampling: str, temperature: float,
           description: str, threads: CpuThreads | None, tracker: PhaseLog) -> dict:
    """The loop of `train_phase`."""
    ranks = current_ranks()
    torch.manual_seed(seed + 7919 * ranks.rank)  # each rank its own dropout stream
    model.to(device).train()
    if config.freeze_embeddings:
        model.encoder.get_input_embeddings().weight.requires_grad_(False)
    total_steps, steps_per_epoch = count_steps(tasks, config)
    eval_every = config.eval_every or steps_per_epoch
    has_dev = any(task.dev is not None for task in tasks)
    schedule = build_schedule(tasks, config.batch_size, total_steps * config.grad_accumulation, seed, sampling, temperature)
    optimizer = _optimizer(model, config)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    fingerprint = {"config": config.model_dump(), "seed": seed, "sizes": [len(task.train) for task in tasks],
                   "heads": [task.head for task in tasks], "sampling": [sampling, temperature], "precision": precision,
                   **({"world_size": ranks.world} if ranks.world > 1 else {})}  # as before for one process
    average = WeightAverage() if config.average_from is not None else None
    average_start = math.ceil(config.average_from * total_steps) if average is not None else None
    state = _resume(out_dir, model, optimizer, scheduler, fingerprint, average, ranks, device)
    if state.step:
        print(f"{description}: resuming at step {state.step}/{total_steps}", file=sys.stderr)
    tracker.begin(state.step, state.curve, state.history)
    log_every = max(1, total_steps // CURVE_POINTS)
    heads = [task.head for task in tasks]
    trainable = [p for p in model.parameters() if p.requires_grad]
    progress = tqdm(total=total_steps, initial=state.step, desc=description, unit="step", dynamic_ncols=True,
                    mininterval=1.0 if sys.stderr.isatty() else 30.0, file=sys.stderr, disable=not ranks.main)
    say = progress.write if ranks.main else lambda text: None
    if threads is not None:
        threads.adapt(force=True)
    started = time.perf_counter() - state.seconds
    while state.step < total_steps:
        if threads is not None:
            threads.adapt()
        optimizer.zero_grad(set_to_none=True)
        step_loss = 0.0
        for micro in range(config.grad_accumulation):
            task_index, indices = schedule[state.step * config.grad_accumulation + micro]
            task = tasks[task_index]
            state.examples += len(indices)
            state.tokens += sum(len(task.train.input_ids[row]) for row in task.train.sequences(indices))
            mine = ranks.shard(indices)
            if not len(mine):
                continue
            batch = collate(task.train, mine, pad_id, config.pad_to_multiple)
            if task.masking is not None:  # a fresh draw per micro-batch, reproducible on resume
                micro_index = state.step * config.grad_accumulation + micro
                draw = (seed * 1_000_003 + micro_index) * 1_009 + ranks.rank
                batch = mask(batch, task.masking, torch.Generator().manual_seed(draw))
            batch = {key: value.to(device) for key, value in batch.items()}
            labels = batch.pop("labels")
            with autocast(precision, device):
                logits = model(heads[task_index], choices=task.train.choices, **batch)
            # a sum over this rank's rows divided by the global micro-batch: the ranks' sums add up to the mean
            loss = task.weight * task.kind.loss(logits, labels) / (len(indices) * config.grad_accumulation)
            loss.backward()
            step_loss += loss.item()
        step_loss = ranks.sum_gradients(trainable, step_loss)
        if not math.isfinite(step_loss):
            raise XstiltsError(f"{description}: the loss is {step_loss} at step {state.step + 1} (lr {config.lr}); "
                               "stopped before the weights took it in: lower lr or check the data")
        state.loss_ema = step_loss if state.loss_ema is None else 0.95 * state.loss_ema + 0.05 * step_loss
        if config.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        lr = optimizer.param_groups[0]["lr"]  # this step's
        scheduler.step()
        state.step += 1
        state.seconds = time.perf_counter() - started
        progress.update(1)
        progress.set_postfix(loss=f"{state.loss_ema:.3f}", ex_s=f"{state.examples / state.seconds:.1f}", refresh=False)
        finished = state.step == total_steps
        at_evaluation = state.step % eval_every == 0 or finished
        if average is not None and at_evaluation and state.step >= average_start:
            average.add(model)
        if has_dev and at_evaluation:
            scores = evaluate_dev(model, tasks, pad_id, precision, device)
            score = float(np.mean(list(scores.values())))
            state.history.append({"step": state.step, "dev": scores, "score": score, "loss": state.loss_ema})
            tracker.dev(state.history[-1])
            say(f"{description}: step {state.step} dev {score:.4f} " + " ".join(f"{k}={v:.4f}" for k, v in scores.items()))
            if state.best_score is None or score > state.best_score:
                state.best_score, state.best_step, state.evals_without_gain = score, state.step, 0
                if config.select_best and average is None and ranks.main:
                    model.save(out_dir / BEST_DIR)
            else:
                state.evals_without_gain += 1
                if config.patience and state.evals_without_gain >= config.patience:
                    say(f"{description}: early stop after {state.evals_without_gain} evaluations without gain")
                    finished = True
        if state.step % log_every == 0 or finished:
            state.curve.append(curve_point(state, lr))
            tracker.curve(state.curve[-1])
        if finished:
            break
        if state.step % config.checkpoint_every == 0:
            rng = rank_rng_states(ranks, device)  # every rank takes part; rank 0 saves
            if ranks.main:
                _save_checkpoint(out_dir, model, optimizer, scheduler, state, fingerprint, average, rng)
    progress.close()
    if not ranks.main:  # rank 0 selects, saves and reports the phase's model
        return {"steps": state.step}
    averaged = {}
    if average is not None and average.count:
        average.apply(model)
        selected = f"average of {average.count}"
        if has_dev:
            averaged["average_dev"] = float(np.mean(list(evaluate_dev(model, tasks, pad_id, precision, device).values())))
            say(f"{description}: averaged weights ({average.count} snapshots) dev {averaged['average_dev']:.4f}")
    elif has_dev and config.select_best and (out_dir / BEST_DIR).exists():
        model.load_state_dict(load_weights(out_dir / BEST_DIR / WEIGHTS_FILE,
                                           f"delete {out_dir} to start this phase over", "best weights"))
        selected = "best"
    else:
        selected = "last"
    return {
        "steps": state.step, "total_steps": total_steps, "best_step": state.best_step, "best_dev": state.best_score,
        "history": state.history, "curve": state.curve, "train_seconds": round(state.seconds, 2),
        "train_examples": state.examples,
        "train_pieces": state.tokens,  # pieces consumed (every sequence of every row drawn, padding excluded)
        "examples_per_second": round(state.examples / max(state.seconds, 1e-9), 2),
        "tokens_per_second": round(state.tokens / max(state.seconds, 1e-9), 1),
        "selected": selected, **averaged,
    }
