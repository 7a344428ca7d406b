"""dot_general on the host CPU: a batched matmul over numpy's BLAS written into the planned
output, split across threads where that was measured faster for the dot's shape.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from typing import Any

import numpy as np

from backends.cpu.threads import thread_pool
from spmd.ir.graph import Op

# Below this many multiply-adds a matmul is not worth splitting across threads.
DOT_SPLIT_MIN_MACS = 1 << 24


@functools.lru_cache(maxsize=4096)
def dot_layout(dimension_numbers: Any, lshape: tuple[int, ...], rshape: tuple[int, ...],
                out_dtype: np.dtype) -> tuple[tuple[int, ...], tuple[int, ...],
                                              tuple[int, int, int, int], np.dtype]:
    """The operand permutations to [B,M,K] and [B,K,N], (B, M, K, N) and the compute dtype
    of one dot's shapes (worked out once: a dot step runs with the same shapes each call)."""
    (lc, rc), (lb, rb) = dimension_numbers
    lf = [i for i in range(len(lshape)) if i not in lc and i not in lb]
    rf = [i for i in range(len(rshape)) if i not in rc and i not in rb]
    batch = math.prod(lshape[i] for i in lb)
    m, k = math.prod(lshape[i] for i in lf), math.prod(lshape[i] for i in lc)
    n = math.prod(rshape[i] for i in rf)
    compute = np.dtype(np.float32) if out_dtype.name in ("bfloat16", "float16") else out_dtype
    return (*lb, *lf, *lc), (*rb, *rc, *rf), (batch, m, k, n), compute


def run_dot(op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray, threads: int = 1) -> None:
    """dot_general as a batched matmul [B,M,K] x [B,K,N] -> [B,M,N] written into `out`;
    large ones are split over the batch (or the rows) across threads, since numpy runs a
    batched matmul one gemm after another and BLAS may be held to one thread per device."""
    lperm, rperm, (batch, m, k, n), compute = dot_layout(
        op.attrs["dimension_numbers"], lhs.shape, rhs.shape, out.dtype)
    a = np.transpose(lhs, lperm).reshape(batch, m, k).astype(compute, copy=False)
    b = np.transpose(rhs, rperm).reshape(batch, k, n).astype(compute, copy=False)
    direct = compute == out.dtype  # out is a contiguous planned buffer: reshape is a view
    result = out.reshape(batch, m, n) if direct else np.empty((batch, m, n), compute)
    parts = min(threads, batch if batch > 1 else m)
    if parts > 1 and batch * m * n * k >= DOT_SPLIT_MIN_MACS:
        axis = 0 if batch > 1 else 1
        bounds = np.linspace(0, result.shape[axis], parts + 1).astype(int)

        def chunk(i: int) -> None:
            lo, hi = bounds[i], bounds[i + 1]
            if axis == 0:
                np.matmul(a[lo:hi], b[lo:hi], out=result[lo:hi])
            else:
                np.matmul(a[:, lo:hi], b, out=result[:, lo:hi])

        list(thread_pool(parts).map(chunk, range(parts)))
    else:
        np.matmul(a, b, out=result)
    if not direct:
        out[...] = result.reshape(out.shape)


class DotThreads:
    """Whether one dot runs faster split across threads, measured on its first calls.

    Which is faster depends on the shape and the host: on this 2-vCPU machine a split
    doubles a short-contraction GEMM (k=64: 33 -> 58 GFLOP/s) and slows a long one (k=256:
    31 -> 27), as the two vCPUs share FMA units. So the first TRIALS calls alternate a split
    and an unsplit run (same results), and the faster median is kept from then on.
    """

    TRIALS = 3

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.times: tuple[list[float], list[float]] = ([], [])  # unsplit, split
        self.chosen: int | None = None if threads > 1 else 1

    def run(self, op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray) -> None:
        if self.chosen is not None:
            run_dot(op, lhs, rhs, out, self.chosen)
            return
        split = len(self.times[1]) < len(self.times[0])
        start = time.perf_counter()
        run_dot(op, lhs, rhs, out, self.threads if split else 1)
        self.times[split].append(time.perf_counter() - start)
        if len(self.times[1]) >= self.TRIALS:
            unsplit, split_times = (statistics.median(t) for t in self.times)
            self.chosen = self.threads if split_times < unsplit else 1
