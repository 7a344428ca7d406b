"""The CPU backend's worker threads: one pool per thread count, made once, shared by every
program (kernels split in chunks, dots split by batch or rows).
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

_pools: dict[int, ThreadPoolExecutor] = {}
_pools_lock = threading.Lock()


def thread_pool(n: int) -> ThreadPoolExecutor:
    """The process's pool of n worker threads."""
    with _pools_lock:
        if n not in _pools:
            _pools[n] = ThreadPoolExecutor(n, thread_name_prefix="spmd-cpu")
        return _pools[n]
