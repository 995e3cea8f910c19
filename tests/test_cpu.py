"""CPU thread policy: the thread count follows the cores that other processes leave free."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from xstilts.cpu import CpuThreads

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
