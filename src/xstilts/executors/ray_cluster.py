"""Ray: every node a Ray task that depends on its parents' tasks, so Ray schedules the graph over a cluster,
gives each node the CPUs (and, where the cluster has them, a GPU for training nodes) it asks for, and retries a node whose
worker died. Node outputs are written by the workers under the study directory, so on a multi-machine
cluster that directory must be one shared path (NFS or similar) mounted at the same place everywhere;
the per-node lock (`study.run_node`) keeps a retried or duplicated task from computing a node twice."""

from __future__ import annotations

from typing import Callable

from xstilts.errors import XstiltsError
from xstilts.executors import Progress
from xstilts.graph import Node
from xstilts.precision import precision_here


def _run_on_worker(work: Callable[[Node], dict], node: Node, *parents: dict) -> dict:
    """The Ray task: `parents` are the parent nodes' results, passed only so Ray waits for them."""
    return work(node)


def node_gpus(node: Node, cluster_gpus: float, eval_gpus: bool = False) -> int:
    """The GPUs a node's task asks for: one for a training node when the cluster has GPUs; none for an
    evaluation (scoring is light, and a GPU held by it would idle a training node) unless `eval_gpus`."""
    return 1 if cluster_gpus >= 1 and (node.kind != "eval" or eval_gpus) else 0


class RayExecutor:
    """Runs the graph on a Ray cluster: `address` None starts a local one for this study (all cores of this
    machine), "auto" joins the cluster `ray start` began here, "HOST:PORT" a remote head node."""

    def __init__(self, address: str | None = None, cpus_per_node: float = 1, retries: int = 3,
                 init_options: dict | None = None, eval_gpus: bool = False) -> None:
        self.address = address
        self.cpus_per_node = cpus_per_node
        self.eval_gpus = eval_gpus
        self.retries = retries
        self.init_options = init_options or {}

    def run(self, nodes: list[Node], work: Callable[[Node], dict], progress: Progress) -> None:
        self._on_cluster(lambda ray: self._run(ray, nodes, work, progress))

    def precision(self, requested: str) -> str:
        """'auto' as a worker that would run a training node resolves it (a Ray task with that node's
        resources: on a GPU worker when the cluster has GPUs); a fixed precision as it is."""
        if requested != "auto":
            return requested

        def ask(ray) -> str:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
            task = ray.remote(precision_here).options(num_cpus=self.cpus_per_node, num_gpus=gpus)
            return ray.get(task.remote(requested))

        return self._on_cluster(ask)

    def _on_cluster(self, use: Callable):
        try:
            import ray
        except ImportError:
            raise XstiltsError("--executor ray needs Ray: pip install 'xstilts[ray]'") from None
        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address, include_dashboard=False, **self.init_options)
        try:
            return use(ray)
        finally:
            if started_here:
                ray.shutdown()

    def _run(self, ray, nodes: list[Node], work: Callable[[Node], dict], progress: Progress) -> None:
        cluster_gpus = ray.cluster_resources().get("GPU", 0)
        task = ray.remote(_run_on_worker)
        refs = {}
        for node in nodes:  # topological order: every parent's ref exists before its children are submitted
            parents = [refs[name] for name in node.parents if name in refs]
            refs[node.name] = task.options(num_cpus=self.cpus_per_node, max_retries=self.retries,
                                           num_gpus=node_gpus(node, cluster_gpus, self.eval_gpus),
                                           name=f"xstilts-{node.name}").remote(work, node, *parents)
        waiting = {refs[node.name]: node for node in nodes}
        done: set[str] = set()
        announced: set[str] = set()
        while waiting:
            for node in waiting.values():  # ready to run once its parents (in this run) are finished
                if node.name not in announced and all(p in done or p not in refs for p in node.parents):
                    announced.add(node.name)
                    progress.started(node)
            ready, _ = ray.wait(list(waiting), num_returns=1)
            node = waiting.pop(ready[0])
            try:
                result = ray.get(ready[0])
            except ray.exceptions.RayError as error:  # a task's error carries the worker's traceback; a worker
                cause = getattr(error, "cause", None) or error  # that died past its retries is a RayError too
                if isinstance(cause, XstiltsError):
                    raise XstiltsError(f"{node.label}: {cause}") from None
                lines = str(cause).strip().splitlines() or [""]
                raise XstiltsError(f"{node.label}: the Ray task failed: {type(cause).__name__}: {lines[-1]}") from None
            progress.finished(node, result)
            done.add(node.name)
