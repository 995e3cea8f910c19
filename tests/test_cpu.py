"""CPU thread policy: the thread count follows the cores that other processes leave free."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from xstilts.config import TaskData, TrainConfig
from xstilts.cpu import CpuThreads, adaptive_threads
from xstilts.model import HeadSpec, MultiHeadModel, load_encoder
from xstilts.phases import Context
from xstilts.task_types.classification import TYPE as CLASSIFICATION
from xstilts.tasks import load_registry
from xstilts.training import TrainTask, train_phase

BUSY_LOOP = "import time\nend = time.time() + 20\nwhile time.time() < end:\n    pass\n"


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_a_busy_process_beside_us_takes_a_thread(restore_threads, monkeypatch) -> None:
    monkeypatch.delenv("XSTILTS_CPU_THREADS", raising=False)
    threads = CpuThreads()
    if threads.cores < 2 or threads.limit < 2:
        pytest.fail(f"this check needs 2 or more cores and torch threads (has {threads.cores}, {threads.limit})")
    burner = subprocess.Popen([sys.executable, "-c", BUSY_LOOP])
    try:
        time.sleep(0.5)
        chosen = threads.adapt(force=True)
        time.sleep(0.5)
        others = threads.others()  # measured since the adapt call: the busy loop keeps one core
    finally:
        burner.kill()
        burner.wait()
    assert others is not None and others >= 0.7
    assert 1 <= chosen <= threads.cores - 1 and torch.get_num_threads() == chosen


def test_the_environment_overrides_the_policy(restore_threads, monkeypatch) -> None:
    monkeypatch.setenv("XSTILTS_CPU_THREADS", "1")
    assert CpuThreads().adapt(force=True) == 1 == torch.get_num_threads()
    torch.set_num_threads(2)
    monkeypatch.setenv("XSTILTS_CPU_THREADS", "all")
    assert CpuThreads().adapt(force=True) == 2


def test_a_phase_leaves_the_thread_count_as_it_found_it(restore_threads, monkeypatch) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv("XSTILTS_CPU_THREADS", "1")  # the phase drops to one thread, as beside a passing load
    with adaptive_threads(torch.device("cpu")) as threads:
        assert threads.adapt(force=True) == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == 2  # not the next phase's limit
    with adaptive_threads(torch.device("cuda")) as threads:
        assert threads is None


def test_a_training_phase_restores_the_thread_count(restore_threads, monkeypatch, tiny_model_dir, shared_data_dir,
                                                     tmp_path) -> None:
    torch.set_num_threads(2)
    monkeypatch.setenv("XSTILTS_CPU_THREADS", "1")
    ctx = Context.create(str(tiny_model_dir), load_registry(), shared_data_dir, 64, "fp32")
    features, _ = ctx.rows(TaskData(task="mnli", max_examples=16), 1)
    model = MultiHeadModel(load_encoder(ctx.model), {"mnli": HeadSpec("classification", ("a", "b", "c"))})
    during, forward = [], model.encoder.forward

    def counting(*args, **kwargs):
        during.append(torch.get_num_threads())
        return forward(*args, **kwargs)

    model.encoder.forward = counting
    train_phase(model, [TrainTask("mnli", CLASSIFICATION, features)], TrainConfig(max_steps=2, batch_size=8), tmp_path,
                seed=1, pad_id=ctx.tokenizer.pad_token_id, precision="fp32", device=torch.device("cpu"))
    assert during == [1, 1] and torch.get_num_threads() == 2
