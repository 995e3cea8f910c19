"""Process memory: the peak resident size a run reports, and the malloc setting that keeps it low."""

from __future__ import annotations

import ctypes
import resource
import sys

M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def return_large_blocks_to_os(threshold_bytes: int = 1 << 20) -> bool:
    """Serve every allocation of at least `threshold_bytes` by its own mmap, so freeing a tensor returns its
    memory to the OS at once. glibc's default raises this threshold to 32 MiB after the first large free;
    activations of ever-changing shapes (dynamic padding) then come from the heap, fragment it, and the
    resident size grows far beyond the memory in use. Returns False where it does not apply (not glibc)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, threshold_bytes))
