"""Executors: local processes, a real local Ray cluster (with a worker killed mid-node) and submitit's local
cluster give the same results table as the sequential executor."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from xstilts.errors import XstiltsError
from xstilts.executors import make_executor
from xstilts.executors.ray_cluster import RayExecutor
from xstilts.study import run_study
from xstilts.study_spec import StudySpec
from helpers import INDONLI, SNLI, tiny_study


@pytest.fixture(scope="module")
def sequential(tiny_model_dir, shared_data_dir, tmp_path_factory) -> tuple[dict, pd.DataFrame]:
    """The reference: the study's nodes one at a time in this process (the target long enough to be killed in)."""
    spec = tiny_study(tiny_model_dir, shared_data_dir, [SNLI, INDONLI], max_steps=30, checkpoint_every=2, eval_every=10)
    out = tmp_path_factory.mktemp("sequential")
    run_study(StudySpec(**spec), out, workers=1)
    return spec, _table(out)


def _table(study_dir: Path) -> pd.DataFrame:
    """The results table, compared exactly: whichever process computes a node runs the same steps on the same
    shapes on the same number of threads (conftest's XSTILTS_CPU_THREADS), hence the same kernels."""
    return pd.read_csv(study_dir / "results.csv").drop(columns="predictions")


def test_parallel_executor_matches_sequential(sequential, tmp_path):
    spec, reference = sequential
    run_study(StudySpec(**spec), tmp_path, workers=2)
    pd.testing.assert_frame_equal(_table(tmp_path), reference)
    assert len(reference) == 3 * 2  # baseline + 2 arms, 2 languages


def _processes_titled(prefix: bytes) -> dict[int, bytes]:
    """Ray names a worker's process `ray::<task name>` while it runs that task."""
    found = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.startswith(prefix):
            found[int(pid)] = title
    return found


def test_ray_cluster_with_a_worker_killed_mid_node_matches_sequential(sequential, tmp_path):
    """A real Ray cluster on loopback with 2 CPUs (2 workers at once). Once a target node has written its
    first checkpoint, the worker running it is SIGKILLed; Ray retries the task on a fresh worker, which
    resumes the node, and the table equals the sequential executor's."""
    spec, reference = sequential
    killed: list[str] = []

    def kill_a_target_worker() -> None:
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for checkpoint in tmp_path.glob("nodes/target-*/checkpoint"):
                if (checkpoint.parent / "DONE").exists():
                    continue
                for pid, title in _processes_titled(b"ray::xstilts-" + checkpoint.parent.name.encode()).items():
                    os.kill(pid, signal.SIGKILL)
                    killed.append(checkpoint.parent.name)
                    return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_a_target_worker, daemon=True)
    killer.start()
    executor = RayExecutor(init_options={"num_cpus": 2, "_node_ip_address": "127.0.0.1", "log_to_driver": False})
    run_study(StudySpec(**spec), tmp_path, executor=executor)
    killer.join(timeout=1)
    assert killed, "no target worker was caught mid-node"
    node = tmp_path / "nodes" / killed[0]
    assert (node / "DONE").exists()
    pd.testing.assert_frame_equal(_table(tmp_path), reference)


def test_submitit_local_cluster_matches_sequential(sequential, tmp_path):
    """The Slurm path through submitit's local cluster: each node a job (a process here), logs kept."""
    spec, reference = sequential
    executor = make_executor("slurm", 2, tmp_path, slurm={"cluster": "local", "timeout_min": 30})
    executor.poll_seconds = 0.5
    run_study(StudySpec(**spec), tmp_path, executor=executor)
    pd.testing.assert_frame_equal(_table(tmp_path), reference)
    assert list((tmp_path / "slurm-logs").glob("*_log.err"))


@pytest.mark.parametrize("kind", ["slurm", "ray"])
def test_a_failing_node_stops_the_study_with_one_line(sequential, tmp_path, kind):
    spec, _ = sequential
    broken = {**spec, "model": str(tmp_path / "no-such-model")}
    if kind == "slurm":
        executor = make_executor("slurm", 1, tmp_path, slurm={"cluster": "local"})
        executor.poll_seconds = 0.5
    else:
        executor = RayExecutor(init_options={"num_cpus": 1, "_node_ip_address": "127.0.0.1", "log_to_driver": False})
    with pytest.raises(XstiltsError, match=r"no-such-model: cannot load this model") as error:
        run_study(StudySpec(**broken), tmp_path, executor=executor)
    assert "\n" not in str(error.value)


def test_an_unknown_slurm_parameter_is_one_line(tmp_path):
    executor = make_executor("slurm", 1, tmp_path, slurm={"cluster": "local", "bogus_key": 1})
    with pytest.raises(XstiltsError, match=r"--slurm: Unknown executor 'bogus' in parameter 'bogus_key'") as error:
        executor.run([], lambda node: {}, None)
    assert "\n" not in str(error.value)


def test_slurm_without_slurm_is_one_line_not_a_quiet_local_run(tmp_path, monkeypatch):
    """Here there is no sbatch: submitit would run every job as a local process; xstilts refuses instead."""
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch on PATH, whatever the machine has
    executor = make_executor("slurm", 1, tmp_path, slurm={"timeout_min": 5})
    with pytest.raises(XstiltsError, match="no Slurm on this machine") as error:
        executor.run([], lambda node: {}, None)
    assert "\n" not in str(error.value)


def test_a_rejected_submission_is_one_line(tiny_model_dir, shared_data_dir, tmp_path, monkeypatch):
    import submitit

    def refuse(self, *args, **kwargs):
        raise RuntimeError("sbatch: error: Batch job submission failed\nInvalid partition name specified")

    monkeypatch.setattr(submitit.AutoExecutor, "submit", refuse)
    spec = StudySpec(**tiny_study(tiny_model_dir, shared_data_dir, [SNLI]))
    executor = make_executor("slurm", 1, tmp_path, slurm={"cluster": "local"})
    with pytest.raises(XstiltsError, match="Slurm refused the job: Invalid partition name specified") as error:
        run_study(spec, tmp_path / "study", executor=executor)
    assert "\n" not in str(error.value)


def test_ray_gives_a_gpu_to_training_nodes_only_unless_evaluations_ask(tiny_model_dir, shared_data_dir):
    from xstilts.executors.ray_cluster import node_gpus
    from xstilts.graph import build_graph

    nodes = build_graph(StudySpec(**tiny_study(tiny_model_dir, shared_data_dir, [SNLI]))).nodes.values()
    kinds = {node.kind: node for node in nodes}
    assert {kind: node_gpus(node, 4) for kind, node in kinds.items()} == {"intermediate": 1, "target": 1, "eval": 0}
    assert node_gpus(kinds["eval"], 4, eval_gpus=True) == 1
    assert {node_gpus(node, 0, eval_gpus=True) for node in nodes} == {0}  # a cluster without GPUs


def test_a_new_seed_is_keyed_and_computed_at_the_precision_of_the_executors_workers(tiny_model_dir, shared_data_dir,
                                                                                    tmp_path):
    """`precision: auto` resolves where the nodes run: an executor whose workers resolve it otherwise than this
    driver gets nodes keyed, computed and recorded at the workers' precision; a seed begun keeps its own."""
    from xstilts.executors.local import SequentialExecutor
    from xstilts.graph import build_graph
    from xstilts.phases import read_result
    from xstilts.precision import precision_here

    here = precision_here("auto")
    elsewhere = {"bf16": "fp32", "fp32": "bf16"}[here]
    asked = []

    class Workers(SequentialExecutor):  # as a Ray or Slurm worker on another kind of device would answer
        def precision(self, requested: str) -> str:
            asked.append(requested)
            return elsewhere

    spec = StudySpec(**{**tiny_study(tiny_model_dir, shared_data_dir, [SNLI]), "precision": "auto"})
    run_study(spec, tmp_path, executor=Workers(), arms=["baseline"])
    nodes = {path.name for path in (tmp_path / "nodes").iterdir() if not path.name.endswith(".lock")}
    assert asked == ["auto"] and nodes <= set(build_graph(spec, precision=elsewhere).nodes)
    assert {read_result(tmp_path / "nodes" / name)["precision"] for name in nodes if name.startswith("target")} \
        == {elsewhere}
    run_study(spec, tmp_path, executor=Workers())  # seed 3 is begun: it keeps its precision, nothing is asked
    assert asked == ["auto"]
    assert {path.name for path in (tmp_path / "nodes").iterdir()} >= nodes
