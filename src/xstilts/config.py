"""Run configuration: strict pydantic models loaded from YAML (an unknown key is an error naming it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from xstilts.errors import XstiltsError
from xstilts.names import PathName
from xstilts.tasks.registry import load_yaml, validation_message
from xstilts.tasks.spec import SplitName, StrictModel
from xstilts.tracking import LOG_BACKENDS

LogBackend = Literal[LOG_BACKENDS]
LOG_DESCRIPTION = ("a tracker of each training phase (loss, learning rate, dev scores, speeds) in its folder's logs/: "
                   "TensorBoard, an offline Weights & Biases run, or none; it changes no result (in no node key)")


class TaskData(StrictModel):
    """Which rows of a task to use: split, languages (default: all), an optional cap, and the source
    ('auto': local files when a data folder is set and the task has them, else the Hub)."""

    task: str
    split: SplitName = "train"
    languages: list[PathName] | None = None
    max_examples: int | None = Field(default=None, gt=0)
    source: Literal["auto", "local", "hub"] = "auto"
    loss_weight: float = Field(default=1.0, gt=0, exclude_if=lambda weight: weight == 1.0,
                               description="training: this task's loss is multiplied by it (e.g. masked LM mixed "
                                           "into a multi-task phase); left out of node keys when 1")


class EvalData(TaskData):
    """An evaluation set; scored with the target task's head (the MNLI head scores every XNLI language)."""

    split: SplitName = "test"

    @model_validator(mode="after")
    def _no_loss_weight(self) -> EvalData:
        if self.loss_weight != 1.0:
            raise ValueError("loss_weight weighs a training task's loss; an evaluation has none")
        return self


class TrainConfig(StrictModel):
    """Optimisation settings of one training phase."""

    epochs: float = Field(default=3.0, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    lr: float = Field(default=5e-5, gt=0)
    batch_size: int = Field(default=32, gt=0)
    grad_accumulation: int = Field(default=1, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    weight_decay: float = Field(default=0.01, ge=0)
    max_grad_norm: float | None = Field(default=1.0, gt=0)
    eval_every: int | None = Field(default=None, gt=0, description="steps; default: once per epoch")
    patience: int | None = Field(default=None, gt=0, description="stop after N evaluations without gain")
    select_best: bool = True
    dev_max_examples: int | None = Field(default=None, gt=0, description="cap on dev rows (a fixed subsample)")
    checkpoint_every: int = Field(default=200, gt=0)
    dropout: float | None = Field(default=None, ge=0, lt=1, description="hidden and head dropout; None: the model's")
    attention_dropout: float | None = Field(
        default=0.0, ge=0, lt=1, description="dropout on attention probabilities; None: the model's")
    attention: Literal["auto", "model", "xstilts_cpu", "eager", "sdpa"] = Field(
        default="auto", description="attention implementation while training; 'auto': xstilts' own on the CPU "
                                    "(see xstilts.attention), the model's own (SDPA) elsewhere")
    activation_checkpointing: bool | None = Field(
        default=None, description="recompute each layer's activations in the backward pass instead of keeping "
                                  "them; None: on a CPU only when a step's estimated memory exceeds half of the "
                                  "available memory (see xstilts.memory), off on GPUs (speed)")
    pad_to_multiple: int = Field(
        default=16, gt=0, description="round each training batch's width up to a multiple of this: activations "
                                      "then come in few sizes that the heap reuses instead of fragmenting")
    freeze_embeddings: bool = Field(
        default=True, description="keep the word-embedding matrix fixed (pieces of unseen languages stay aligned)")
    average_from: float | None = Field(
        default=None, ge=0, lt=1,
        description="keep the mean of the weights at every evaluation step from this fraction of training on "
                    "(checkpoint averaging; replaces best-checkpoint selection)")


class TaskMixing(StrictModel):
    """How a phase of several tasks draws its next batch's task: in proportion to the tasks' sizes, in
    proportion to size ** (1 / temperature), or uniformly."""

    sampling: Literal["proportional", "temperature", "uniform"] = "proportional"
    temperature: float = Field(default=2.0, gt=0)


class IntermediateConfig(TaskMixing):
    """The intermediate phase: one task, or several trained together with sampled batches."""

    tasks: list[TaskData] = Field(min_length=1)
    train: TrainConfig = TrainConfig()


class TargetConfig(StrictModel):
    """The target phase (English training data) and what it takes over from the intermediate phase.

    carry = "encoder": only the encoder is carried over; the target head starts fresh (X-STILTs default).
    carry = "encoder_and_head": an intermediate head is carried too: the one named by `carry_head`, or
    without it the only intermediate head of the target's type and label set.
    """

    task: TaskData
    carry: Literal["encoder", "encoder_and_head"] = "encoder"
    carry_head: str | None = Field(default=None, description="with carry encoder_and_head: the intermediate task "
                                                             "whose head the target head starts from")
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _named_head(self) -> TargetConfig:
        if self.carry_head is not None and self.carry != "encoder_and_head":
            raise ValueError("carry_head names the intermediate head to carry: set carry: encoder_and_head")
        return self


class RunConfig(StrictModel):
    """One X-STILTs run: base model -> [intermediate] -> target -> zero-shot evaluation."""

    name: PathName = "run"
    model: str = "embedded"
    seed: int = 13
    max_length: int = Field(default=128, ge=8)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    pooling: Literal["mean", "cls"] = Field(default="mean", description="sentence vector the heads read")
    data_dir: str | None = None
    task_dirs: list[str] = Field(default_factory=list)
    log: LogBackend = Field(default="none", description=LOG_DESCRIPTION)
    intermediate: IntermediateConfig | None = None
    target: TargetConfig
    evaluate: list[EvalData] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> RunConfig:
        if self.target.carry == "encoder_and_head" and self.intermediate is None:
            raise ValueError("carry 'encoder_and_head' needs an intermediate phase")
        names = [task.task for task in self.intermediate.tasks] if self.intermediate else []
        if self.target.carry_head is not None and self.target.carry_head not in names:
            raise ValueError(f"carry_head {self.target.carry_head!r} is not an intermediate task ({', '.join(names)})")
        check_unique_evaluations(self.evaluate)
        return self


def check_unique_evaluations(evaluate: list[EvalData]) -> None:
    """Each task/split is evaluated once (its languages are chosen in that one entry)."""
    pairs = [(e.task, e.split) for e in evaluate]
    repeated = sorted({f"{t}/{s}" for t, s in pairs if pairs.count((t, s)) > 1})
    if repeated:
        raise ValueError(f"evaluate lists {', '.join(repeated)} more than once; list its languages in one entry")


def resolve_data_dir(configured: str | None) -> Path | None:
    """The data folder: the config's or --data-dir, else $XSTILTS_DATA_DIR, else None (Hub sources)."""
    value = configured or os.environ.get("XSTILTS_DATA_DIR")
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_dir():
        raise XstiltsError(f"{path}: data folder not found")
    return path


def parse_config(data: dict, where: str | Path) -> RunConfig:
    """Validate a config mapping; errors are one line naming the source and key."""
    try:
        return RunConfig(**data)
    except ValidationError as error:
        raise XstiltsError(validation_message(where, error)) from None


def load_config(path: Path) -> RunConfig:
    """Load and validate a run config YAML file."""
    return parse_config(load_yaml(path), path)
