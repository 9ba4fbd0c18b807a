"""Process-level settings that make the compute stages faster without changing any result.

``tune_allocator``: PyTorch's CPU tensors come straight from malloc. With glibc's defaults,
buffers of a few MB (activations and their gradients) are handed back to the operating
system when freed and faulted in again, page by page, on the next forward pass. Raising
glibc's mmap and trim thresholds keeps them in the process: measured 1.3–1.5× on CPU for
certification and σ optimization (benchmarks/README.md). Only speed and resident memory
(which stays near its peak, bounded by the batch size) change; computed values do not.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters (malloc.h)
_M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30  # 1 GiB: tensors below it stay in the heap once allocated
ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "SMOOTHCERT_DEFAULT_MALLOC")


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds for this process; True if both were set.

    Does nothing (False) off Linux/glibc, or when the environment already sets
    ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` (the user's choice wins) or
    ``SMOOTHCERT_DEFAULT_MALLOC`` (keep glibc's defaults, e.g. to benchmark them).
    """
    if not sys.platform.startswith("linux") or any(name in os.environ for name in ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, THRESHOLD) == 1
