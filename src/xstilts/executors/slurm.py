"""Slurm through submitit: every node a Slurm job, submitted once its parents are finished, at most `jobs`
in the queue at once. submitit's local cluster ("local") runs the same jobs as processes on this machine,
which is how this path is tested without Slurm. Node outputs are written by the jobs under the study
directory, which must be on a file system the compute nodes share with the submitting machine."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from xstilts.errors import XstiltsError
from xstilts.executors import Progress, ready_nodes
from xstilts.graph import Node
from xstilts.precision import precision_here

DEFAULT_PARAMETERS = {"timeout_min": 240, "cpus_per_task": 4, "name": "xstilts"}


class SlurmExecutor:
    """`parameters` go to submitit's `update_parameters` (generic keys such as `timeout_min`, `cpus_per_task`,
    `gpus_per_node`, `mem_gb`, or `slurm_`-prefixed ones such as `slurm_partition`); job logs go to `folder`."""

    def __init__(self, folder: Path, jobs: int, parameters: dict | None = None, cluster: str | None = None,
                 poll_seconds: float = 5.0) -> None:
        self.folder = folder
        self.jobs = jobs
        self.parameters = {**DEFAULT_PARAMETERS, **(parameters or {})}
        self.cluster = cluster
        self.poll_seconds = poll_seconds

    def _executor(self):
        """submitit's executor with this study's job parameters; no Slurm, or a bad parameter, is one line."""
        try:
            import submitit
        except ImportError:
            raise XstiltsError("--executor slurm needs submitit: pip install 'xstilts[slurm]'") from None
        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster)
        if self.cluster is None and executor.cluster != "slurm":  # submitit would quietly run local processes
            raise XstiltsError("--executor slurm: no Slurm on this machine (no sbatch found); run the driver where "
                               "Slurm is, or pass --slurm cluster=local to run the jobs here as processes")
        try:
            executor.update_parameters(**self.parameters)
        except (NameError, TypeError, ValueError) as error:  # submitit names an unknown key with a NameError
            raise XstiltsError(f"--slurm: {str(error).splitlines()[0]} (generic keys: timeout_min, mem_gb, "
                               "cpus_per_task, gpus_per_node, ...; Slurm's own with a slurm_ prefix)") from None
        return executor

    def precision(self, requested: str) -> str:
        """'auto' as a job with the nodes' parameters (their GPUs) resolves it: one short job, queued like
        the nodes'; a fixed precision as it is."""
        if requested != "auto":
            return requested
        job = _submit(self._executor(), "asking the nodes' device for its precision", precision_here, requested)
        try:
            return job.result()
        except Exception as error:
            raise XstiltsError(f"the job asking the nodes' device for its precision failed: {_last_error(error)} "
                               f"(logs: {self.folder}); or set `precision:` to bf16 or fp32") from None

    def run(self, nodes: list[Node], work: Callable[[Node], dict], progress: Progress) -> None:
        executor = self._executor()
        running: dict[str, tuple[object, Node]] = {}
        try:
            self._run(executor, nodes, work, progress, running)
        finally:  # a failed job, or Ctrl-C, leaves no job of this study queued or running
            for job, _ in running.values():
                job.cancel(check=False)

    def _run(self, executor, nodes: list[Node], work: Callable[[Node], dict], progress: Progress,
             running: dict[str, tuple[object, Node]]) -> None:
        pending = {node.name: node for node in nodes}
        in_run = set(pending)
        done: set[str] = set()
        while pending or running:
            ready = ready_nodes(pending, in_run, done)
            for node in ready[: self.jobs - len(running)]:
                del pending[node.name]
                progress.started(node)
                running[node.name] = (_submit(executor, node.label, work, node), node)
            if not running:
                raise RuntimeError("graph has nodes whose parents never finish")
            time.sleep(self.poll_seconds)
            for name, (job, node) in list(running.items()):
                if job.done():
                    del running[name]
                    try:
                        result = job.result()
                    except Exception as error:  # submitit raises FailedJobError holding the job's traceback
                        raise XstiltsError(f"{node.label}: Slurm job {job.job_id} failed: {_last_error(error)} "
                                           f"(logs: {self.folder})") from None
                    progress.finished(node, result)
                    done.add(name)


def _submit(executor, what: str, function: Callable, *args):
    """submitit's job for `function(*args)`; a submission sbatch refuses (a bad partition, account or limit) is
    one line."""
    try:
        return executor.submit(function, *args)
    except Exception as error:
        why = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise XstiltsError(f"{what}: Slurm refused the job: {why}") from None


def _last_error(error: Exception) -> str:
    """The job's own exception line out of submitit's message (traceback between two dashed rules)."""
    parts = str(error).split("----------------------\n")
    trace = parts[1] if len(parts) > 2 else str(error)
    last = [line for line in trace.splitlines() if line.strip()][-1]
    return last.removeprefix(f"{XstiltsError.__module__}.{XstiltsError.__name__}: ")
