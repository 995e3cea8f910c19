"""CPU threads on a shared machine: slow down in proportion to a competing load, never collapse.

PyTorch's OpenMP threads spin at every barrier, and each parallel region waits for its slowest thread. With
other busy processes on the cores, a thread that gets part of a core holds up the rest: measured on a 2-core
VM, evaluation of XNLI pairs fell from 44 pairs/s alone to about 2 beside two test processes, and 10 training
steps kept 40% of their solo speed beside one busy loop. So the thread count follows the cores other
processes leave free, measured from /proc between calls (all CPU time of the machine less this process's
own), re-checked during long phases. benchmarks/bench_load.py, beside one busy loop: training kept 78% of its
solo speed (13.3 -> 10.3 pairs/s; fixed threads 13.4 -> 5.4), evaluation 57% (fixed: 51%), the same solo
speed. (OMP_WAIT_POLICY=PASSIVE also stopped the collapse, but in one 10-step measurement cost about 20% of
the solo training speed, 7.6 vs 9.7 pairs/s, so it is not used.)

`XSTILTS_CPU_THREADS`: 'auto' (default), 'all' (leave PyTorch's thread count alone) or a number.
benchmarks/bench_load.py measures both policies alone and beside a busy process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

ENVIRONMENT = "XSTILTS_CPU_THREADS"
RECHECK_SECONDS = 20.0


def _proc_times() -> tuple[int, int, int] | None:
    """(all CPU ticks, busy CPU ticks, this process's ticks) from /proc; None where /proc is not Linux's."""
    try:
        with open("/proc/stat") as handle:
            fields = [int(value) for value in handle.readline().split()[1:9]]
        with open("/proc/self/stat") as handle:
            own = handle.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    total = sum(fields)
    busy = total - fields[3] - fields[4]  # less idle and iowait
    return total, busy, int(own[11]) + int(own[12])  # utime + stime


def usable_cores() -> int:
    """The cores this process may run on (its affinity, where the OS tells it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


class CpuThreads:
    """Sets PyTorch's thread count to the cores other processes leave free (`adapt`, at most every
    RECHECK_SECONDS unless forced); does nothing on a GPU or when XSTILTS_CPU_THREADS says otherwise."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.cores = usable_cores()
        self.limit = torch.get_num_threads()
        self.setting = os.environ.get(ENVIRONMENT, "auto").strip().lower()
        self.last = _proc_times()
        self.checked = 0.0

    def others(self) -> float | None:
        """Cores' worth of CPU time used by other processes since the previous call (None if unknown)."""
        now = _proc_times()
        last, self.last = self.last, now
        if now is None or last is None or now[0] <= last[0]:
            return None
        total, busy, own = (a - b for a, b in zip(now, last))
        return max(0.0, (busy - own) / total * self.cores)

    def adapt(self, force: bool = False) -> int:
        """Choose the thread count now; returns it."""
        if self.setting == "all":
            return self.torch.get_num_threads()
        if self.setting.isdigit():
            self.torch.set_num_threads(max(1, int(self.setting)))
            return self.torch.get_num_threads()
        clock = time.monotonic()
        if not force and clock - self.checked < RECHECK_SECONDS:
            return self.torch.get_num_threads()
        if force and clock - self.checked > 1.0:
            self.last = _proc_times()
            time.sleep(0.25)  # a short sample when nothing has been measured lately
        self.checked = clock
        others = self.others()
        if others is not None:
            free = round(self.cores - others)
            self.torch.set_num_threads(max(1, min(self.limit, free)))
        return self.torch.get_num_threads()


@contextmanager
def adaptive_threads(device: torch.device) -> Iterator[CpuThreads | None]:
    """A phase's `CpuThreads` on the CPU (None elsewhere). The phase leaves PyTorch's thread count as it found
    it: a count lowered under a passing load would otherwise become the next phase's limit (seen in a study,
    whose last phases ran on one thread of two, at half speed, with the other core idle)."""
    if device.type != "cpu":
        yield None
        return
    threads = CpuThreads()
    try:
        yield threads
    finally:
        threads.torch.set_num_threads(threads.limit)
