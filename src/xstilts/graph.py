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

from xstilts.config import EvalData, TaskData, TaskMixing, TrainConfig, resolve_data_dir
from xstilts.errors import XstiltsError
from xstilts.precision import pick_device, resolve_precision
from xstilts.study_spec import BASELINE, StudySpec
from xstilts.task_types import task_type
from xstilts.tasks.readers import input_fingerprint
from xstilts.tasks.registry import TaskRegistry, load_registry
from xstilts.tasks.spec import StrictModel

# An evaluation node's result.json layout, in its key: results of an older layout (per-language `accuracy`,
# before `metric`/`score`) are scored again instead of read; trained nodes stay cached.
EVAL_RESULT_FORMAT = 2

NodeKind = Literal["intermediate", "target", "eval"]


class PhaseSettings(StrictModel):
    """What every node shares: the base model, sequence length, the precision resolved for it, pooling."""

    model: str
    max_length: int
    precision: Literal["bf16", "fp32"]
    pooling: Literal["mean", "cls"]


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


@dataclass
class Graph:
    """Nodes by name, in topological order (each once), and the result cells that use them."""

    nodes: dict[str, Node] = field(default_factory=dict)
    uses: list[Use] = field(default_factory=list)
    base: list[str] = field(default_factory=list)  # evaluations of the base model (retrieval tasks)

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
        found = []
        for use in self.uses:
            if name in (use.intermediate, use.target, use.eval) and f"{use.arm}/{use.seed}" not in found:
                found.append(f"{use.arm}/{use.seed}")
        return found


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


def build_graph(spec: StudySpec, seed_precisions: dict[int, str] | None = None) -> Graph:
    """Every arm (baseline first) x seed: [intermediate] -> target -> one eval node per evaluation set; and
    for each retrieval evaluation (Tatoeba) one node scoring the base model's encoder, without parents.

    A node's key covers its settings, its parents, the resolved precision (a worker computes the node in that
    precision) and its inputs (task specs and data file checksums). `seed_precisions` keeps a seed at the
    precision it was computed at elsewhere (a seed is computed wholly at one); other seeds take this machine's."""
    precision = resolve_precision(spec.precision, pick_device())
    seed_precisions = seed_precisions or {}
    registry = load_registry([Path(p) for p in spec.task_dirs])
    data_dir = resolve_data_dir(spec.data_dir)
    graph = Graph()

    def settings(seed: int | None) -> dict:
        return {"model": spec.model, "max_length": spec.max_length, "pooling": spec.pooling,
                "precision": precision if seed is None else seed_precisions.get(seed, precision)}

    def evaluation(data: EvalData, head: str | None, seed: int | None, parents: tuple[str, ...], label: str) -> str:
        return graph.add(Node("eval", EvalNodeConfig(
            **settings(seed), result_format=EVAL_RESULT_FORMAT, data=data, head=head,
            inputs=_inputs([data], registry, data_dir, training=False)), parents, label))

    for data in spec.evaluate:
        if not task_type(registry.get(data.task).type).trainable:
            graph.base.append(evaluation(data, None, None, (), f"eval {data.task}/{data.split} of the base model"))
    for seed in spec.seeds:
        for arm in [None, *spec.arms]:
            parent = None
            if arm is not None:
                parent = graph.add(Node("intermediate", IntermediateNodeConfig(
                    **settings(seed), seed=seed, tasks=arm.capped_tasks(),
                    inputs=_inputs(arm.capped_tasks(), registry, data_dir, training=True),
                    train=arm.train or spec.intermediate_train, sampling=arm.sampling, temperature=arm.temperature,
                ), (), f"intermediate {'+'.join(t.task for t in arm.tasks)}{f' cap {arm.cap}' if arm.cap else ''} seed {seed}"))
            carried = {"carry": spec.target.carry, "carry_head": spec.target.carry_head} if parent else {}
            target = graph.add(Node("target", TargetNodeConfig(
                **settings(seed), seed=seed, task=spec.target.task, train=spec.target.train,
                inputs=_inputs([spec.target.task], registry, data_dir, training=True), **carried,
            ), (parent,) if parent else (), f"target {spec.target.task.task} after {arm.name if arm else BASELINE} seed {seed}"))
            for index, data in enumerate(spec.evaluate):
                name = evaluation(data, spec.target.task.task, seed, (target,),
                                  f"eval {data.task}/{data.split} of {arm.name if arm else BASELINE} seed {seed}")
                graph.uses.append(Use(arm.name if arm else BASELINE, seed, index, parent, target, name))
    return graph


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
