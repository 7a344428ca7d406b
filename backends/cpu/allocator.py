"""glibc malloc tuning, once per process, so that step buffers are not page-faulted afresh.

Every call of a compiled step allocates its results (numpy arrays, via malloc). glibc's
default adapts its mmap threshold and trims the top of the heap whenever more than twice
that is free: with parameter-sized results of a few MB, each step gives the pages back and
faults them in again (measured: ~1,000 minor faults and 10-20% of an MLP training step).
A fixed 32 MB mmap threshold and a 256 MB trim threshold keep freed buffers for the next
step, as the caching allocators of other frameworks do. SPMD_MALLOC_TUNING=0 opts out.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

from spmd import config

# mallopt parameter numbers from glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's largest allowed value on 64-bit hosts
TRIM_THRESHOLD_BYTES = 256 << 20


@functools.cache
def tune() -> bool:
    """Sets the thresholds when running on glibc; returns whether it did."""
    if not config.env("SPMD_MALLOC_TUNING"):
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
        libc.gnu_get_libc_version  # noqa: B018  only glibc has it (musl, macOS: skip)
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
        and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
