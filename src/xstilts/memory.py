"""Process memory: the peak resident size a run reports, and the pieces that keep it low."""

from __future__ import annotations

import contextlib
import ctypes
import resource
import sys
from typing import Iterator

from torch import nn


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_free_heap() -> bool:
    """Give the free pages inside glibc's heap back to the OS (malloc_trim). After training, activations of
    ever-changing shapes leave the heap fragmented: freed, but still resident. Returns False where it does
    not apply (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.malloc_trim(0)
    return True


@contextlib.contextmanager
def activation_checkpointing(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run the block with `model` (a Hugging Face model) recomputing each layer's activations in the backward
    pass instead of keeping them (the dropout masks are recomputed identically), then switch it off."""
    if not enabled:
        yield
        return
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    try:
        yield
    finally:
        model.activation_checkpointing_disable()
