"""Local executors: one node at a time in this process, or several in spawned worker processes."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from typing import Callable

from xstilts.executors import Progress, ready_nodes
from xstilts.graph import Node
from xstilts.precision import precision_here


class LocalPrecision:
    """Nodes run on this machine: a precision resolves here."""

    def precision(self, requested: str) -> str:
        return precision_here(requested)


class SequentialExecutor(LocalPrecision):
    """One node at a time, in topological order, in this process."""

    def run(self, nodes: list[Node], work: Callable[[Node], dict], progress: Progress) -> None:
        for node in nodes:
            progress.started(node)
            progress.finished(node, work(node))


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


class ParallelExecutor(LocalPrecision):
    """Up to `workers` nodes at once in worker processes (spawned), CPU threads split between them.
    `work` must be picklable (a module-level function or a functools.partial of one)."""

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def run(self, nodes: list[Node], work: Callable[[Node], dict], progress: Progress) -> None:
        pending = {node.name: node for node in nodes}
        in_run = set(pending)
        done: set[str] = set()
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context, initializer=_limit_threads,
                                                    initargs=(threads,)) as pool:
            running: dict[concurrent.futures.Future, Node] = {}
            while pending or running:
                ready = ready_nodes(pending, in_run, done)
                for node in ready[: self.workers - len(running)]:
                    del pending[node.name]
                    progress.started(node)
                    running[pool.submit(work, node)] = node
                if not running:
                    raise RuntimeError("graph has nodes whose parents never finish")
                finished, _ = concurrent.futures.wait(running, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    node = running.pop(future)
                    progress.finished(node, future.result())
                    done.add(node.name)

