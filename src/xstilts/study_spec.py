"""Study specification: one target and evaluation shared by many intermediate arms, over several seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError, model_validator

from xstilts.config import (LOG_DESCRIPTION, EvalData, LogBackend, TargetConfig, TaskData, TaskMixing, TrainConfig,
                             check_unique_evaluations)
from xstilts.errors import XstiltsError
from xstilts.names import PathName
from xstilts.tasks.registry import load_yaml, validation_message
from xstilts.tasks.spec import StrictModel

BASELINE = "baseline"
ArmGroup = Literal["english", "low-resource", "mixed", "mlm", "control"]  # the report compares arms by these


class Arm(TaskMixing):
    """A named intermediate phase: its tasks (trained together when several), group and data cap.

    Groups: `english` and `low-resource` (labelled tasks in those languages), `mixed` (labelled tasks with
    other data, e.g. low-resource NLI with masked LM alongside), `mlm` (masked LM on unlabelled text only),
    `control` (a positive control: an arm expected to help a lot, such as in-language NLI in the evaluation's
    own languages; the report says whether the design detected it, and it never enters the primary question).

    `cap` subsamples every intermediate task to at most N examples (a fixed subsample per seed), so
    that arms can be compared at equal data size; without it the arm trains on the natural size."""

    name: PathName
    group: ArmGroup
    tasks: list[TaskData] = Field(min_length=1)
    cap: int | None = Field(default=None, gt=0)
    train: TrainConfig | None = None

    def capped_tasks(self) -> list[TaskData]:
        """The arm's tasks with the size cap applied."""
        if self.cap is None:
            return list(self.tasks)
        return [t.model_copy(update={"max_examples": min(t.max_examples or self.cap, self.cap)}) for t in self.tasks]


class PrimaryContrast(StrictModel):
    """The study's pre-declared question, tested in a family of its own: the mean change of the English arms
    minus that of the low-resource arms, on the language average of one evaluation.

    evaluation: 'task/split' (default: the first evaluation); arms: which English and low-resource arms enter
    (default: all of them). The answer is about these arms, this model and this data size."""

    evaluation: str | None = None
    arms: list[str] | None = Field(default=None, min_length=2)


class StudySpec(StrictModel):
    """The whole comparison: baseline (always an arm) plus the listed arms, for every seed."""

    name: PathName
    description: str = ""
    model: str = "embedded"
    max_length: int = Field(default=128, ge=8)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    pooling: Literal["mean", "cls"] = "mean"
    data_dir: str | None = None
    task_dirs: list[str] = Field(default_factory=list)
    seeds: list[int] = Field(min_length=1)
    intermediate_train: TrainConfig = TrainConfig()
    target: TargetConfig
    evaluate: list[EvalData] = Field(default_factory=lambda: [EvalData(task="xnli", split="test")], min_length=1)
    intermediate_evaluate: list[EvalData] = Field(
        default_factory=list, description="evaluations of each arm's intermediate model on a task the arm trains, "
                                          "with that task's head (how well, and in which languages, it was learned)")
    arms: list[Arm] = Field(default_factory=list)
    primary: PrimaryContrast = PrimaryContrast()
    workers: int = Field(default=1, ge=1)
    log: LogBackend = Field(default="none", description=LOG_DESCRIPTION)

    @model_validator(mode="after")
    def _unique_arms(self) -> StudySpec:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct (runs with the same seed are the same run): {self.seeds}")
        if not self.arms:
            raise ValueError("a study needs at least one arm besides the baseline")
        names = [arm.name for arm in self.arms]
        duplicated = {name for name in names if names.count(name) > 1} | ({BASELINE} & set(names))
        if duplicated:
            raise ValueError(f"arm names must be unique and not {BASELINE!r}: {sorted(duplicated)}")
        check_unique_evaluations(self.evaluate)
        check_unique_evaluations(self.intermediate_evaluate)
        trained = {task.task for arm in self.arms for task in arm.tasks}
        untrained = [data.task for data in self.intermediate_evaluate if data.task not in trained]
        if untrained:
            raise ValueError(f"intermediate_evaluate: {untrained[0]!r} is not a task of any arm (its head would not "
                             f"exist); the arms train {sorted(trained)}")
        lacking = [arm.name for arm in self.arms if self.target.carry_head not in {None, *(t.task for t in arm.tasks)}]
        if lacking:
            raise ValueError(f"target.carry_head {self.target.carry_head!r} is not a task of the arms {lacking}")
        self._check_primary()
        return self

    def _check_primary(self) -> None:
        """The primary contrast names an evaluation and arms of this study, with both groups present."""
        evaluations = [f"{e.task}/{e.split}" for e in self.evaluate]
        if self.primary.evaluation is not None and self.primary.evaluation not in evaluations:
            raise ValueError(f"primary.evaluation {self.primary.evaluation!r} is not one of the evaluations "
                             f"({', '.join(evaluations)})")
        groups = {arm.name: arm.group for arm in self.arms}
        unknown = [name for name in self.primary.arms or [] if name not in groups]
        if unknown:
            raise ValueError(f"primary.arms names unknown arms {unknown}; the arms are {sorted(groups)}")
        chosen = {groups[name] for name in self.primary.arms or []}
        if self.primary.arms is not None and not {"english", "low-resource"} <= chosen:
            raise ValueError("primary.arms needs at least one English and one low-resource arm")


def load_study(path: Path) -> StudySpec:
    """Load and validate a study YAML file (unknown keys are errors naming them)."""
    try:
        return StudySpec(**load_yaml(path))
    except ValidationError as error:
        raise XstiltsError(validation_message(path, error)) from None
