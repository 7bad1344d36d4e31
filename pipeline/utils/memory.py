"""The process's memory allocator: keep_freed_memory asks glibc to keep what the process frees (a training step
frees and reallocates GBs of activations)."""

from __future__ import annotations


def keep_freed_memory() -> bool:
    """Ask glibc to keep memory that is freed in the process instead of unmapping it (M_MMAP_MAX = 0, a trim
    threshold of 2 GB). A training step frees and reallocates GBs of activation blocks; with glibc's defaults each
    step unmaps them and page-faults them back in, zeroed: 1.14-1.8x a step at full width, depending on the
    machine (docs/benchmarks.md).
    The cost is that the process keeps its peak heap until it exits, as a training process does anyway. A no-op
    (False) where the C library is not glibc."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
