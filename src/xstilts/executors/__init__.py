"""Executors run a graph's nodes once their parents are finished. The graph code only calls
`Executor.run(nodes, work, progress)`; local processes, a Ray cluster and Slurm (through submitit) are
three classes behind that one protocol."""

from __future__ import annotations

from typing import Callable, Protocol

from xstilts.graph import Node


class Progress(Protocol):
    """Receives node life-cycle events (for live progress output)."""

    def started(self, node: Node) -> None: ...

    def finished(self, node: Node, result: dict) -> None: ...


class Executor(Protocol):
    """Runs `work(node)` for every node, each after all of its parents."""

    def run(self, nodes: list[Node], work: Callable[[Node], dict], progress: Progress) -> None: ...
