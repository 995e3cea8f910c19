"""`xstilts plan`: how many seeds a study needs to detect a chosen effect, and how long it would take here.

The variances come from a finished pilot study (its primary contrast: the seed-to-seed variance of the
English − low-resource contrast and the test-item variance), the timings from the pilot's phase results
(seconds against examples trained or pairs scored, fitted per phase kind). The planned study's phases are
counted from its own graph, so a larger target, more arms or larger test sets enter the estimate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from xstilts.config import TaskData, TrainConfig, resolve_data_dir
from xstilts.errors import XstiltsError
from xstilts.graph import EvalNodeConfig, IntermediateNodeConfig, build_graph
from xstilts.phases import read_result
from xstilts.report.analysis import analyse
from xstilts.report.protocol import load_protocol
from xstilts.report.results import load_results
from xstilts.report.statistics import Estimate, seeds_needed
from xstilts.study_spec import StudySpec
from xstilts.task_types import read_split
from xstilts.tasks.registry import TaskRegistry, load_registry


@dataclass(frozen=True)
class Cost:
    """Seconds = fixed + per_unit * units (units: examples trained, or pairs scored)."""

    fixed: float
    per_unit: float

    def seconds(self, units: float) -> float:
        return self.fixed + self.per_unit * units

    @classmethod
    def fit(cls, units: list[float], seconds: list[float]) -> Cost:
        """Least squares over the pilot's phases; a single size gives a pure rate (no fixed part)."""
        x, y = np.asarray(units, float), np.asarray(seconds, float)
        if len(set(x.tolist())) < 2:
            return cls(0.0, float(y.sum() / x.sum()))
        slope, intercept = np.polyfit(x, y, 1)
        if intercept < 0 or slope < 0:
            return cls(0.0, float(y.sum() / x.sum()))
        return cls(float(intercept), float(slope))


@dataclass(frozen=True)
class Plan:
    """The pilot's primary estimate, its item count per language, and the phase costs measured in it."""

    estimate: Estimate
    pilot_items: int
    train_cost: Cost
    eval_cost: Cost


def _pilot_costs(pilot_dir: Path) -> tuple[Cost, Cost]:
    """Training and evaluation costs fitted on every finished phase of the pilot."""
    train_units, train_seconds, eval_units, eval_seconds = [], [], [], []
    for result_file in sorted((pilot_dir / "nodes").glob("*/result.json")):
        result = read_result(result_file.parent)
        if result.get("kind") == "eval":
            eval_units.append(sum(value["n"] for value in result["languages"].values()))
            eval_seconds.append(result["seconds"])
        elif result.get("kind") == "train":
            train_units.append(result["metrics"]["train_examples"])
            train_seconds.append(result["seconds"])
    if not train_units or not eval_units:
        raise XstiltsError(f"{pilot_dir}: the pilot has no finished training and evaluation phases to time")
    return Cost.fit(train_units, train_seconds), Cost.fit(eval_units, eval_seconds)


def load_plan(pilot_dir: Path) -> Plan:
    """Variances and costs from a finished pilot study."""
    results = load_results(pilot_dir)
    analysis = analyse(results, load_protocol(pilot_dir).study)
    primary = analysis.primary
    if primary is None:
        raise XstiltsError(f"{pilot_dir}: the pilot has no English and low-resource arms, so it measures no "
                           "primary contrast to plan from")
    if math.isnan(primary.estimate.train_variance):
        raise XstiltsError(f"{pilot_dir}: the pilot ran one seed; its seed-to-seed variance is unknown (run 2 or more)")
    items = int(np.mean(list(results.sizes(primary.eval_set).values())))
    return Plan(primary.estimate, items, *_pilot_costs(pilot_dir))


class RowCounter:
    """Rows of a task's split per language, read once."""

    def __init__(self, registry: TaskRegistry, data_dir: Path | None) -> None:
        self.registry, self.data_dir = registry, data_dir
        self.counts: dict[tuple[str, str, str, str], int] = {}

    def rows(self, data: TaskData) -> list[int]:
        spec = self.registry.get(data.task)
        counts = []
        for language in data.languages or spec.languages:
            key = (data.task, data.split, language, data.source)
            if key not in self.counts:
                self.counts[key] = len(read_split(spec, data.split, language, self.data_dir, data.source).examples)
            counts.append(self.counts[key])
        return counts

    def train_examples(self, tasks: list[TaskData], train: TrainConfig) -> float:
        """Examples one training phase consumes (epochs x capped rows, or max_steps x batch)."""
        rows = sum(min(sum(self.rows(task)), task.max_examples or math.inf) for task in tasks)
        if train.max_steps:
            return float(train.max_steps * train.batch_size * train.grad_accumulation)
        return train.epochs * rows

    def eval_pairs(self, data: TaskData) -> int:
        return sum(min(count, data.max_examples or count) for count in self.rows(data))


def row_counter(spec: StudySpec) -> RowCounter:
    """A row counter over the study's tasks and data folder."""
    return RowCounter(load_registry([Path(p) for p in spec.task_dirs]), resolve_data_dir(spec.data_dir))


def study_seconds(spec: StudySpec, seeds: int, plan: Plan, counter: RowCounter | None = None) -> dict[str, float]:
    """Estimated seconds of every phase kind of `spec` run with `seeds` seeds from a cold cache, one worker."""
    planned = spec.model_copy(update={"seeds": list(range(1, seeds + 1))})
    counter = counter or row_counter(spec)
    totals: dict[str, float] = {"intermediate": 0.0, "target": 0.0, "eval": 0.0}
    for node in build_graph(planned).nodes.values():
        config = node.config
        if isinstance(config, EvalNodeConfig):
            totals["eval"] += plan.eval_cost.seconds(counter.eval_pairs(config.data))
            continue
        tasks = config.tasks if isinstance(config, IntermediateNodeConfig) else [config.task]
        totals[node.kind] += plan.train_cost.seconds(counter.train_examples(tasks, config.train))
    return totals


ITEM_CHOICES = (250, 500, 1000, 2000, 3000)  # items per language tried by the design search, besides the full set
MIN_DESIGN_SEEDS = 4  # the A/A check splits the baseline's seeds in halves of at least 2


@dataclass(frozen=True)
class Design:
    """A study design for one effect: seeds, items per language of the primary evaluation, wall time."""

    seeds: int
    items: int
    seconds: dict[str, float]

    @property
    def total(self) -> float:
        return sum(self.seconds.values())


def with_items(spec: StudySpec, evaluation: str, items: int | None) -> StudySpec:
    """The spec with the primary evaluation capped at `items` per language (None: every item)."""
    evaluate = [e.model_copy(update={"max_examples": items}) if f"{e.task}/{e.split}" == evaluation else e
                for e in spec.evaluate]
    return spec.model_copy(update={"evaluate": evaluate})


def designs(spec: StudySpec, plan: Plan, effect: float, evaluation: str, counter: RowCounter) -> list[Design]:
    """For each number of items per language (ITEM_CHOICES up to the full set, and the full set), the fewest
    seeds (at least MIN_DESIGN_SEEDS) that detect `effect` (points) with 80% power, and that design's wall
    time; sizes at which no number of seeds suffices are left out. The test items are the same for every
    seed, so their variance does not shrink with seeds: only more items lower it."""
    data = next(e for e in spec.evaluate if f"{e.task}/{e.split}" == evaluation)
    full = int(np.mean(counter.rows(data.model_copy(update={"max_examples": None}))))
    found = []
    for items in sorted({size for size in ITEM_CHOICES if size < full} | {full}):
        seeds = seeds_needed(plan.estimate, effect / 100, plan.pilot_items / items)
        if seeds is not None:
            seeds = max(seeds, MIN_DESIGN_SEEDS)
            planned = with_items(spec, evaluation, None if items == full else items)
            found.append(Design(seeds, items, study_seconds(planned, seeds, plan, counter)))
    return found


def _clock(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min"


def plan_study(spec: StudySpec, pilot_dir: Path, effects: list[float], workers: int = 1) -> str:
    """The plan as text: seeds needed per effect (points) and the study's estimated wall time with them."""
    plan = load_plan(pilot_dir)
    estimate = plan.estimate
    evaluation = spec.primary.evaluation or f"{spec.evaluate[0].task}/{spec.evaluate[0].split}"
    data = next(e for e in spec.evaluate if f"{e.task}/{e.split}" == evaluation)
    counter = row_counter(spec)
    planned_items = int(np.mean([min(count, data.max_examples or count) for count in counter.rows(data)]))
    item_scale = plan.pilot_items / planned_items
    lines = [
        f"Pilot {pilot_dir}: primary contrast (English − low-resource) {100 * estimate.value:+.2f} points over "
        f"{estimate.seeds} seeds; per-seed std {100 * math.sqrt(estimate.train_variance):.2f} points, test-item "
        f"standard error {100 * math.sqrt(estimate.item_variance):.2f} points at {plan.pilot_items} items per language.",
        f"Planned study {spec.name}: {evaluation} at {planned_items} items per language (item variance scaled by "
        f"{item_scale:.2f}); phase costs measured in the pilot on this machine: training "
        f"{plan.train_cost.fixed:.0f} s + {1000 * plan.train_cost.per_unit:.0f} s per 1,000 examples, evaluation "
        f"{plan.eval_cost.fixed:.0f} s + {1000 * plan.eval_cost.per_unit:.1f} s per 1,000 pairs.",
    ]
    for effect in effects:
        seeds = seeds_needed(estimate, effect / 100, item_scale)
        if seeds is None:
            lines.append(f"  {effect:.2f} points: not reachable by seeds alone at this test-set size (the item "
                         "variance alone exceeds it); evaluate more items")
        else:
            seconds = study_seconds(spec, seeds, plan, counter)
            parts = ", ".join(f"{kind} {_clock(value)}" for kind, value in seconds.items())
            lines.append(f"  {effect:.2f} points with 80% power at α = 0.05: {seeds} seeds; estimated wall time "
                         f"{_clock(sum(seconds.values()) / workers)} with {workers} worker{'s' * (workers > 1)} "
                         f"({parts})")
        options = designs(spec, plan, effect, evaluation, counter)
        if not options:
            lines.append(f"    design: no test-set size of {evaluation} reaches {effect:.2f} points")
            continue
        best = min(options, key=lambda design: design.total)
        others = "; ".join(f"{d.items} items: {d.seeds} seeds, {_clock(d.total / workers)}"
                           for d in options if d is not best)
        lines.append(f"    cheapest design: {best.seeds} seeds x {best.items} items per language, "
                     f"{_clock(best.total / workers)}" + (f" (else {others})" if others else ""))
    return "\n".join(lines)
