"""Executors run a graph's nodes once their parents are finished. The graph code only calls
`Executor.run(nodes, work, progress)`; local processes, a Ray cluster and Slurm (through submitit) are
three classes behind that one protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Protocol

from xstilts.graph import Node


class Progress(Protocol):
    """Receives node life-cycle events (for live progress output)."""

    def started(self, node: Node) -> None: ...

    def finished(self, node: Node, result: dict) -> None: ...


class Executor(Protocol):
    """Runs `work(node)` for every node, each after all of its parents; says what a precision ('auto')
    resolves to where its training nodes run (a worker's device, not the driver's), so that the graph is keyed
    at the precision the nodes are computed at."""

    def run(self, nodes: list[Node], work: Callable[[Node], dict], progress: Progress) -> None: ...

    def precision(self, requested: str) -> str: ...


def ready_nodes(pending: dict[str, Node], in_run: set[str], done: set[str]) -> list[Node]:
    """The pending nodes whose parents are finished: done in this run, or not part of it (cached)."""
    return [node for node in pending.values() if all(p in done or p not in in_run for p in node.parents)]


def make_executor(kind: str, workers: int, study_dir: Path, address: str | None = None, cpus_per_node: float | None = None,
                  slurm: dict | None = None) -> Executor:
    """`local`: sequential for one worker, process-parallel for more; `ray`: a Ray cluster (`address`);
    `slurm`: Slurm jobs through submitit, at most `workers` at once (submitit's `cluster` may be given in `slurm`)."""
    if kind == "ray":
        from xstilts.executors.ray_cluster import RayExecutor

        return RayExecutor(address, cpus_per_node or 1)
    if kind == "slurm":
        from xstilts.executors.slurm import SlurmExecutor

        parameters = dict(slurm or {})
        cluster = parameters.pop("cluster", None)
        if cpus_per_node:
            parameters.setdefault("cpus_per_task", int(cpus_per_node))
        return SlurmExecutor(study_dir / "slurm-logs", workers, parameters, cluster)
    from xstilts.executors.local import ParallelExecutor, SequentialExecutor

    return SequentialExecutor() if workers == 1 else ParallelExecutor(workers)
