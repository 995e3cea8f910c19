"""A study as a graph of phase nodes, each addressed by a hash of its own config and its parents' hashes,
so identical phases (e.g. the baseline target run of a seed) are computed once and reused."""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal

from pydantic import Field

from xstilts.config import EvalData, RunConfig, TargetConfig, TaskData, TaskMixing, TrainConfig, resolve_data_dir
from xstilts.errors import XstiltsError
from xstilts.model_identity import model_identity
from xstilts.precision import pick_device, resolve_precision
from xstilts.study_spec import BASELINE, StudySpec
from xstilts.task_types import task_type
from xstilts.tasks.readers import input_fingerprint
from xstilts.tasks.registry import TaskRegistry, load_registry
from xstilts.tasks.spec import StrictModel

# How results are computed, in every key. Bumped (with a line in docs/studies.md) when a change to xstilts changes
# what a finished node would hold, so that caches of the old computation are not read as the new one's; a release
# that changes no result leaves it, and every cache stays valid. Version 1 is left out of keys (those made
# before it existed).
RESULTS_VERSION = 1
# An evaluation node's result.json layout, in its key: results of an older layout (per-language `accuracy`,
# before `metric`/`score`) are scored again instead of read; trained nodes stay cached.
EVAL_RESULT_FORMAT = 2

NodeKind = Literal["intermediate", "target", "eval"]


class PhaseSettings(StrictModel):
    """What every node shares: the base model (its weights' identity, `model_identity`), sequence length, the
    precision resolved for it, pooling, and the version of how results are computed."""

    model: str
    max_length: int
    precision: Literal["bf16", "fp32"]
    pooling: Literal["mean", "cls"]
    results_version: int = Field(default=1, exclude_if=lambda value: value == 1)


class IntermediateNodeConfig(PhaseSettings, TaskMixing):
    """An intermediate phase: its (capped) tasks trained together, how batches are sampled across them."""

    seed: int
    tasks: list[TaskData]
    inputs: dict
    train: TrainConfig


class TargetNodeConfig(PhaseSettings):
    """A target phase; `carry` and `carry_head` are set only after an intermediate phase (left out of the
    key otherwise)."""

    seed: int
    task: TaskData
    inputs: dict
    train: TrainConfig
    carry: Literal["encoder", "encoder_and_head"] | None = Field(default=None, exclude_if=lambda value: value is None)
    carry_head: str | None = Field(default=None, exclude_if=lambda value: value is None)


class EvalNodeConfig(PhaseSettings):
    """An evaluation: the set, the head that scores it (None: a retrieval task scores the encoder)."""

    result_format: int
    data: EvalData
    head: str | None
    inputs: dict


NodeConfig = IntermediateNodeConfig | TargetNodeConfig | EvalNodeConfig
NODE_CONFIGS: dict[str, type[NodeConfig]] = {"intermediate": IntermediateNodeConfig, "target": TargetNodeConfig,
                                             "eval": EvalNodeConfig}


@dataclass(frozen=True)
class Node:
    """One phase: what defines it (`config`), the nodes it builds on, and a human label."""

    kind: NodeKind
    config: NodeConfig
    parents: tuple[str, ...]  # names of the parent nodes
    label: str

    @property
    def key(self) -> str:
        """Content hash of kind, config and parents."""
        text = json.dumps({"kind": self.kind, "config": self.config.model_dump(), "parents": self.parents},
                          sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def name(self) -> str:
        """Directory name of the node's outputs."""
        return f"{self.kind}-{self.key}"


@dataclass(frozen=True)
class Use:
    """Where an (arm, seed, evaluation) cell of the results table comes from."""

    arm: str
    seed: int
    eval_index: int
    intermediate: str | None
    target: str
    eval: str


@dataclass(frozen=True)
class Probe:
    """An evaluation of an arm's intermediate model with its own head (`intermediate_evaluate`)."""

    arm: str
    seed: int
    intermediate: str
    eval: str


@dataclass
class Graph:
    """Nodes by name, in topological order (each once), the result cells that use them, and the evaluations
    outside the results table (of the base model, and of intermediate models)."""

    nodes: dict[str, Node] = field(default_factory=dict)
    uses: list[Use] = field(default_factory=list)
    base: list[str] = field(default_factory=list)  # evaluations of the base model (retrieval tasks)
    probes: list[Probe] = field(default_factory=list)

    def add(self, node: Node) -> str:
        self.nodes.setdefault(node.name, node)
        return node.name

    def cells(self, seeds: list[int] | None = None, arms: list[str] | None = None) -> list[Use]:
        """The result cells of a slice (all seeds or arms where None); unknown seeds or arms are errors."""
        known_seeds = sorted({use.seed for use in self.uses})
        known_arms = list(dict.fromkeys(use.arm for use in self.uses))
        unknown = [seed for seed in seeds or [] if seed not in known_seeds]
        if unknown:
            raise XstiltsError(f"--seeds {unknown[0]} is not a seed of this study (its seeds: "
                               f"{', '.join(map(str, known_seeds))})")
        for arm in arms or []:
            if arm not in known_arms:
                close = difflib.get_close_matches(arm, known_arms, n=1)
                raise XstiltsError(f"--arms {arm!r} is not an arm of this study"
                                   + (f" (did you mean {close[0]!r}?)" if close else f" (its arms: {', '.join(known_arms)})"))
        return [use for use in self.uses if (seeds is None or use.seed in seeds) and (arms is None or use.arm in arms)]

    def wanted(self, cells: list[Use]) -> list[str]:
        """The evaluation nodes a slice of result cells asks for: its cells', the base model's, and the
        intermediate evaluations of its arms and seeds."""
        chosen = {(use.arm, use.seed) for use in cells}
        probes = [probe.eval for probe in self.probes if (probe.arm, probe.seed) in chosen]
        return list(dict.fromkeys([*self.base, *(use.eval for use in cells), *probes]))

    def closure(self, names: list[str]) -> list[Node]:
        """The named nodes and all their ancestors, in graph order."""
        found, stack = set(), list(names)
        while stack:
            name = stack.pop()
            if name not in found:
                found.add(name)
                stack.extend(self.nodes[name].parents)
        return [node for name, node in self.nodes.items() if name in found]

    def to_run(self, wanted: list[str], finished: Callable[[Node], bool], usable: Callable[[Node], bool]) -> list[Node]:
        """What computing `wanted` takes, in graph order: each wanted node not `finished`, and each ancestor of
        a node to compute that is not `usable` as a parent (a trained node imported without its weights is
        finished but not usable). A finished node is never recomputed for its own sake."""
        need, stack = set(), [name for name in wanted if not finished(self.nodes[name])]
        while stack:
            name = stack.pop()
            if name not in need:
                need.add(name)
                stack.extend(parent for parent in self.nodes[name].parents if not usable(self.nodes[parent]))
        return [node for name, node in self.nodes.items() if name in need]

    def users(self, name: str) -> list[str]:
        """'arm/seed' labels of the result cells that depend on a node."""
        cells = [(use.arm, use.seed, (use.intermediate, use.target, use.eval)) for use in self.uses]
        cells += [(probe.arm, probe.seed, (probe.intermediate, probe.eval)) for probe in self.probes]
        return list(dict.fromkeys(f"{arm}/{seed}" for arm, seed, names in cells if name in names))


def _inputs(tasks: list[TaskData], registry: TaskRegistry, data_dir: Path | None, training: bool) -> dict:
    """Per task: a hash of its spec (labels, columns, label map, ...) and the fingerprint of every file it
    reads (the split, and for training its dev split), so that an edited task YAML or a replaced data file
    gives the node a new key."""
    inputs = {}
    for data in tasks:
        spec = registry.get(data.task)
        splits = [data.split] + (["dev"] if training and "dev" in spec.splits and data.split != "dev" else [])
        inputs[data.task] = {
            # defaults left out: a new optional task key does not re-key every cached node
            "spec": hashlib.sha256(spec.model_dump_json(exclude_defaults=True).encode()).hexdigest()[:16],
            "files": {f"{split}/{language}": input_fingerprint(spec, split, language, data_dir, data.source)
                      for split in splits for language in data.languages or spec.languages}}
    return inputs


class _Builder:
    """Adds a study's or a run's nodes to a graph: the shared settings, and each node kind's config and label."""

    def __init__(self, setup: StudySpec | RunConfig, seed_precisions: dict[int, str], precision: str | None = None) -> None:
        self.precision = precision or resolve_precision(setup.precision, pick_device())
        self.seed_precisions = seed_precisions
        self.registry = load_registry([Path(p) for p in setup.task_dirs])
        self.data_dir = resolve_data_dir(setup.data_dir)
        self.shared = {"model": model_identity(setup.model), "max_length": setup.max_length,
                       "pooling": setup.pooling, "results_version": RESULTS_VERSION}
        self.graph = Graph()

    def settings(self, seed: int | None) -> dict:
        precision = self.precision if seed is None else self.seed_precisions.get(seed, self.precision)
        return {**self.shared, "precision": precision}

    def intermediate(self, seed: int, tasks: list[TaskData], train: TrainConfig, mixing: TaskMixing,
                     label: str) -> str:
        return self.graph.add(Node("intermediate", IntermediateNodeConfig(
            **self.settings(seed), seed=seed, tasks=tasks, inputs=_inputs(tasks, self.registry, self.data_dir, True),
            train=train, sampling=mixing.sampling, temperature=mixing.temperature), (), label))

    def target(self, seed: int, target: TargetConfig, parent: str | None, label: str) -> str:
        carried = {"carry": target.carry, "carry_head": target.carry_head} if parent else {}
        return self.graph.add(Node("target", TargetNodeConfig(
            **self.settings(seed), seed=seed, task=target.task, train=target.train,
            inputs=_inputs([target.task], self.registry, self.data_dir, True), **carried,
        ), (parent,) if parent else (), label))

    def evaluation(self, data: EvalData, head: str | None, seed: int | None, parents: tuple[str, ...],
                   label: str) -> str:
        return self.graph.add(Node("eval", EvalNodeConfig(
            **self.settings(seed), result_format=EVAL_RESULT_FORMAT, data=data, head=head,
            inputs=_inputs([data], self.registry, self.data_dir, training=False)), parents, label))


def build_graph(spec: StudySpec, seed_precisions: dict[int, str] | None = None, precision: str | None = None) -> Graph:
    """Every arm (baseline first) x seed: [intermediate] -> target -> one eval node per evaluation set; an
    eval node per `intermediate_evaluate` set of a task the arm trains, scoring the intermediate model with
    that task's head; and for each retrieval evaluation (Tatoeba) one node scoring the base model's encoder,
    without parents.

    A node's key covers its settings, its parents, the resolved precision (a worker computes the node in that
    precision) and its inputs (task specs and data file checksums). `seed_precisions` keeps a seed at the
    precision it was computed at elsewhere (a seed is computed wholly at one); other seeds take `precision`
    (where the executor runs nodes: `Executor.precision`), by default the study's as it resolves here."""
    build = _Builder(spec, seed_precisions or {}, precision)
    graph = build.graph
    for data in spec.evaluate:
        if not task_type(build.registry.get(data.task).type).trainable:
            graph.base.append(build.evaluation(data, None, None, (), f"eval {data.task}/{data.split} of the base model"))
    for seed in spec.seeds:
        for arm in [None, *spec.arms]:
            parent = None
            if arm is not None:
                parent = build.intermediate(
                    seed, arm.capped_tasks(), arm.train or spec.intermediate_train, arm,
                    f"intermediate {'+'.join(t.task for t in arm.tasks)}{f' cap {arm.cap}' if arm.cap else ''} seed {seed}")
                for data in spec.intermediate_evaluate:
                    if data.task in {t.task for t in arm.tasks}:
                        graph.probes.append(Probe(arm.name, seed, parent, build.evaluation(
                            data, data.task, seed, (parent,), f"eval {data.task}/{data.split} of intermediate "
                                                              f"{arm.name} seed {seed}")))
            target = build.target(seed, spec.target, parent,
                                  f"target {spec.target.task.task} after {arm.name if arm else BASELINE} seed {seed}")
            for index, data in enumerate(spec.evaluate):
                name = build.evaluation(data, spec.target.task.task, seed, (target,),
                                        f"eval {data.task}/{data.split} of {arm.name if arm else BASELINE} seed {seed}")
                graph.uses.append(Use(arm.name if arm else BASELINE, seed, index, parent, target, name))
    return graph


def run_graph(config: RunConfig) -> tuple[Graph, dict[str, str]]:
    """A run as a one-cell graph with the nodes (and keys) a study's cell of these settings has: [intermediate]
    -> target -> an eval node per evaluation. Also the run directory's phase folder for each node
    (`intermediate`, `target`, `eval-TASK-SPLIT`)."""
    build = _Builder(config, {})
    folders, parent = {}, None
    if config.intermediate is not None:
        parent = build.intermediate(config.seed, config.intermediate.tasks, config.intermediate.train,
                                    config.intermediate, "intermediate")
        folders["intermediate"] = parent
    target = build.target(config.seed, config.target, parent, "target")
    folders["target"] = target
    for data in config.evaluate:
        folders[f"eval-{data.task}-{data.split}"] = build.evaluation(
            data, config.target.task.task, config.seed, (target,), f"eval {data.task}/{data.split}")
    return build.graph, folders


def node_dir(study_dir: Path, node: Node) -> Path:
    """Where a node's outputs live."""
    return study_dir / "nodes" / node.name


def precision_graphs(spec: StudySpec) -> dict[str, Graph]:
    """The study's graph with every seed at each precision it could have been computed at ('auto': bf16 on
    machines that have it, fp32 on the others; a fixed precision: that one alone)."""
    options = ("bf16", "fp32") if spec.precision == "auto" else (spec.precision,)
    return {precision: build_graph(spec, dict.fromkeys(spec.seeds, precision)) for precision in options}


def seed_precisions(spec: StudySpec, study_dir: Path) -> dict[int, str]:
    """The precision each seed's nodes in `study_dir` carry, for seeds with nodes there (begun or finished,
    here or merged from elsewhere); a seed found at two precisions is an error, since its contrasts would
    compare unlike runs."""
    found: dict[int, set[str]] = {}
    for precision, graph in precision_graphs(spec).items():
        for use in graph.uses:
            names = [name for name in (use.intermediate, use.target, use.eval) if name]
            if any(node_dir(study_dir, graph.nodes[name]).exists() for name in names):
                found.setdefault(use.seed, set()).add(precision)
    mixed = {seed: sorted(precisions) for seed, precisions in found.items() if len(precisions) > 1}
    if mixed:
        seed, precisions = next(iter(mixed.items()))
        raise XstiltsError(f"{study_dir}: seed {seed} has nodes at {' and '.join(precisions)}; a seed is computed "
                           "at one precision (remove one copy's nodes of that seed)")
    return {seed: precisions.pop() for seed, precisions in found.items()}


def node_seed(graph: Graph, node: Node) -> int | None:
    """The seed a node was trained with (an evaluation: its parent's); None for a base-model evaluation."""
    while isinstance(node.config, EvalNodeConfig) and node.parents:
        node = graph.nodes[node.parents[0]]
    return None if isinstance(node.config, EvalNodeConfig) else node.config.seed
