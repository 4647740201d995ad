"""Keeps freed host memory in the process during CPU training instead of returning it to the OS."""

from __future__ import annotations

import ctypes
import sys

# glibc mallopt(3) parameters.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# The largest mmap threshold glibc accepts on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX).
_MMAP_THRESHOLD = 32 * 1024 * 1024
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes a C int

_state = {"retained": False}


def retain_freed_memory() -> bool:
    """Makes glibc reuse freed heap memory across training steps (Linux/glibc only; idempotent).

    By default glibc returns the top of the heap to the OS as soon as it is free and serves blocks
    above an adaptive threshold with fresh mmaps. A training step frees every activation at the end
    of backward and allocates them again in the next forward, so each step pays a page fault for
    every 4 KiB it touches: on CPUs this tripled the time of a LoRA step on the 256-wide benchmark
    model (``bench/train_throughput.py``). With a fixed 32 MiB mmap threshold and no trimming the
    next step reuses the same pages; the process keeps its peak heap until it exits, which a
    training worker does when the job ends. This is what jemalloc or tcmalloc, the allocators
    recommended for CPU training, do by themselves.

    Returns:
        Whether the allocator was tuned (False where glibc's ``mallopt`` is unavailable).
    """
    if _state["retained"]:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _state["retained"] = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
    return _state["retained"]
