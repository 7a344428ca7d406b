"""Large result buffers kept for reuse once the caller has let go of them.

Above glibc's mmap threshold (32 MB, the most backends/cpu/allocator.py can set) every
np.empty maps fresh pages, and the kernel that first writes them pays a page fault per 4 KB:
about 7 ms of a 16M-element softmax's 49 ms here. Like the MPI transport's result buffers,
a kept buffer is handed out again only when nothing but the pool references it.
"""

from __future__ import annotations

import math
import sys
import threading

import numpy as np

from backends.cpu.allocator import MMAP_THRESHOLD_BYTES

POOLED_MIN_BYTES = MMAP_THRESHOLD_BYTES
KEPT_PER_RESULT = 2  # the one the caller still holds (last step's params) and the next
# sys.getrefcount of a kept buffer nobody else holds: the pool's list, the loop, the call.
UNSHARED_REFS = 3


class ResultPool:
    """Per program: result buffers by value id (fixed shape and dtype)."""

    def __init__(self) -> None:
        self._kept: dict[int, list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def take(self, value: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A buffer for result `value`: a kept one nobody holds, else a new one."""
        if math.prod(shape) * dtype.itemsize < POOLED_MIN_BYTES:
            return np.empty(shape, dtype)
        with self._lock:
            kept = self._kept.setdefault(value, [])
            for buffer in kept:
                if sys.getrefcount(buffer) <= UNSHARED_REFS:
                    return buffer
            buffer = np.empty(shape, dtype)
            if len(kept) >= KEPT_PER_RESULT:
                kept.pop(0)
            kept.append(buffer)
            return buffer
