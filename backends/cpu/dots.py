"""dot_general on the host CPU: a batched matmul written into the planned output, over numpy's
BLAS or (small float GEMMs) our native kernel, split across threads or not: each dot keeps the
variant its first calls measured fastest.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
from typing import Any

import numpy as np

from backends.cpu import cache, gemm
from backends.cpu.threads import thread_pool
from backends.cpu.trials import Fastest
from spmd.ir.graph import Op

# Below this many multiply-adds a matmul is not worth splitting across threads (nor trying
# to): the block's 8 x [256,128]@[128,32] projections (8.4M) run 25 -> ~45 GFLOP/s split.
DOT_SPLIT_MIN_MACS = 1 << 22
# The native kernel is tried only where every one of M, K, N is at most this: it is ahead
# on GPT's 8 x [256,16]@[16,64] (33 vs 26 GFLOP/s) and behind on 8 x [256,64]@[64,48] (37 vs
# 51); the trials pick per dot, and bigger dots go to the BLAS's cache blocking untried.
NATIVE_MAX_DIM = 256
# The native kernel's batch is split across threads only from this many multiply-adds: a
# thread handoff costs ~0.1 ms here, and halves of smaller dots measured 2-5x slower.
NATIVE_SPLIT_MIN_MACS = 1 << 23


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
    """dot_general as a batched matmul [*batch,M,K] x [*batch,K,N] -> [*batch,M,N] written
    into `out`; large ones are split over the batch (or the rows) across threads, since numpy
    runs a batched matmul one gemm after another and BLAS may be held to one thread.

    The batch dims stay apart: numpy's matmul steps over any batch strides, so an operand
    whose batch dims do not merge (attention's [b, h] read from a [b, t, h, k] buffer) is
    not copied; only row or contraction dims that do not merge are."""
    lperm, rperm, (batch, m, k, n), compute = dot_layout(
        op.attrs["dimension_numbers"], lhs.shape, rhs.shape, out.dtype)
    nbatch = len(op.attrs["dimension_numbers"][1][0])
    batch_shape = tuple(lhs.shape[i] for i in lperm[:nbatch])
    a = np.transpose(lhs, lperm).reshape(*batch_shape, m, k).astype(compute, copy=False)
    b = np.transpose(rhs, rperm).reshape(*batch_shape, k, n).astype(compute, copy=False)
    direct = compute == out.dtype  # out is a contiguous planned buffer: reshape is a view
    result = (out.reshape(*batch_shape, m, n) if direct
              else np.empty((*batch_shape, m, n), compute))
    by_batch = nbatch > 0 and batch_shape[0] > 1
    parts = min(threads, batch_shape[0] if by_batch else m)
    if parts > 1 and batch * m * n * k >= DOT_SPLIT_MIN_MACS:
        bounds = np.linspace(0, batch_shape[0] if by_batch else m, parts + 1).astype(int)

        def chunk(i: int) -> None:
            lo, hi = bounds[i], bounds[i + 1]
            if by_batch:
                np.matmul(a[lo:hi], b[lo:hi], out=result[lo:hi])
            else:
                np.matmul(a[..., lo:hi, :], b, out=result[..., lo:hi, :])

        list(thread_pool(parts).map(chunk, range(parts)))
    else:
        np.matmul(a, b, out=result)
    if not direct:
        out[...] = result.reshape(out.shape)


def native_operands(op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray
                    ) -> tuple[cache.KernelFn, np.ndarray, np.ndarray, np.ndarray] | None:
    """The native kernel and the [B,M,K], [B,K,N], [B,M,N] views it runs on, where it fits
    (small, one float dtype, whole element strides, the output contiguous and apart from
    the inputs), else None."""
    lperm, rperm, (batch, m, k, n), _ = dot_layout(
        op.attrs["dimension_numbers"], lhs.shape, rhs.shape, out.dtype)
    if not lhs.dtype == rhs.dtype == out.dtype:
        return None
    if min(batch, m, k, n) < 1 or max(m, k, n) > NATIVE_MAX_DIM:
        return None
    a = np.transpose(lhs, lperm).reshape(batch, m, k)
    b = np.transpose(rhs, rperm).reshape(batch, k, n)
    result = out.reshape(batch, m, n)
    if not result.flags.c_contiguous:
        return None
    if np.may_share_memory(result, a) or np.may_share_memory(result, b):
        return None
    kernel = gemm.kernel_for(a, b, result)
    return None if kernel is None else (kernel, a, b, result)


def run_native(op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray, parts: int = 1
               ) -> None:
    """dot_general by the native kernel, its batch split in `parts` (the calling thread runs
    the first); a call whose operands do not fit it runs the BLAS instead."""
    operands = native_operands(op, lhs, rhs, out)
    if operands is None:
        run_dot(op, lhs, rhs, out)
        return
    kernel, a, b, result = operands
    pointers = (ctypes.c_void_p * 3)(gemm.address(a), gemm.address(b), gemm.address(result))
    where = ctypes.addressof(pointers)
    batch = a.shape[0]
    parts = min(parts, batch)
    if parts < 2:
        kernel(0, batch, where)
        return
    bounds = np.linspace(0, batch, parts + 1).astype(int).tolist()
    pool = thread_pool(parts)
    futures = [pool.submit(kernel, bounds[i], bounds[i + 1], where) for i in range(1, parts)]
    kernel(bounds[0], bounds[1], where)
    for future in futures:
        future.result()


@functools.cache
def _blas_library() -> Any | None:
    """threadpoolctl's handle on the one BLAS numpy calls (None where it finds none or
    several): setting its thread count is a ~2 us call, cheap enough around one dot."""
    from threadpoolctl import ThreadpoolController

    libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    return libraries[0] if len(libraries) == 1 else None


def run_blas_threaded(op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray,
                      threads: int = 1) -> None:
    """dot_general by the BLAS on `threads` of its own threads, the caller's limit restored
    after (the stacked runtime holds the BLAS to one thread outside its dots)."""
    library = _blas_library()
    if library is None:
        run_dot(op, lhs, rhs, out)
        return
    before = library.get_num_threads()
    library.set_num_threads(threads)
    try:
        run_dot(op, lhs, rhs, out)
    finally:
        library.set_num_threads(before)


def native_enabled() -> bool:
    """SPMD_NATIVE_GEMM=0 keeps every dot on the BLAS (to compare against)."""
    return os.environ.get("SPMD_NATIVE_GEMM", "1") != "0"


Variant = tuple[str, int]  # ("blas" | "blas_threaded" | "native", threads)


class DotThreads:
    """Which way one dot runs fastest, measured on its first calls (trials.Fastest): the
    BLAS unsplit, split across our threads or on its own threads, and for small float GEMMs
    the native kernel unsplit or split.

    Which is faster depends on the shape and the host: on this 2-vCPU machine the BLAS's own
    two threads run 8 x [64,256]@[256,256] at 57-59 GFLOP/s against 32-37 on one thread
    (two of our threads each calling a one-thread BLAS do not scale: 28-34), yet collapse
    when other processes load the cores; numpy loops over a batch of tiny GEMMs at 17-25
    GFLOP/s where the native kernel runs 26-37 (GPT's 64 x [32,64]@[64,64]). Splits are
    tried only on dots big enough to gain from one.
    """

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.trials: Fastest | None = None

    @property
    def kind(self) -> str:
        return self.trials.chosen[0] if self.trials and self.trials.chosen else "blas"

    @property
    def chosen(self) -> int | None:
        """The thread count of the kept variant (None while trials last)."""
        return self.trials.chosen[1] if self.trials and self.trials.chosen else None

    def _candidates(self, op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray
                    ) -> list[Variant]:
        operands = native_operands(op, lhs, rhs, out) if native_enabled() else None
        macs = math.prod(dot_layout(op.attrs["dimension_numbers"], lhs.shape, rhs.shape,
                                    out.dtype)[2])
        variants: list[Variant] = [("blas", 1)] + ([("native", 1)] if operands else [])
        # below these sizes a split costs more than it saves (the BLAS's is not even made)
        if self.threads > 1 and macs >= DOT_SPLIT_MIN_MACS:
            variants.append(("blas", self.threads))
            if _blas_library() is not None:
                variants.append(("blas_threaded", self.threads))
        if (operands and self.threads > 1 and macs >= NATIVE_SPLIT_MIN_MACS
                and operands[1].shape[0] > 1):
            variants.append(("native", 2))
        return variants

    def run(self, op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray) -> None:
        if self.trials is None:
            self.trials = Fastest(self._candidates(op, lhs, rhs, out))
        self.trials.run(lambda variant: _runner(variant[0])(op, lhs, rhs, out, variant[1]))


def _runner(kind: str) -> Any:
    return {"blas": run_dot, "blas_threaded": run_blas_threaded, "native": run_native}[kind]
