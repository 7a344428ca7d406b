"""dot_general on the host CPU: a batched matmul written into the planned output, over numpy's
BLAS or (small float GEMMs) our native kernel, split across threads or not: each dot keeps the
variant its first calls measured fastest.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import math
import os
from typing import Any

import numpy as np

from backends.cpu import cache, gemm
from backends.cpu.spin_pool import native_address, spin_pool
from backends.cpu.trials import Fastest
from spmd import config
from spmd.ir.graph import Op
from spmd.ir.types import TensorType

# From this many multiply-adds a dot our workers cannot split (one GEMM, or too big for the
# native kernel) tries the BLAS on its own threads.
BLAS_THREADS_MIN_MACS = 1 << 22
# The native kernel is tried only where every one of M, K, N is at most this: it is ahead
# on GPT's 8 x [256,16]@[16,64] (33 vs 26 GFLOP/s) and behind on 8 x [256,64]@[64,48] (37 vs
# 51); the trials pick per dot, and bigger dots go to the BLAS's cache blocking untried.
NATIVE_MAX_DIM = 256
# The native kernel's batch split across our spinning workers is tried from this many
# multiply-adds (~60 us of work; a handoff costs ~10 us).
NATIVE_SPLIT_MIN_MACS = 1 << 20


@functools.lru_cache(maxsize=4096)
def dot_layout(
    dimension_numbers: Any, lshape: tuple[int, ...], rshape: tuple[int, ...], out_dtype: np.dtype
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, int, int, int], np.dtype]:
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


def run_dot(op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray) -> None:
    """dot_general as numpy's batched matmul [*batch,M,K] x [*batch,K,N] -> [*batch,M,N]
    written into `out`, on the BLAS's current threads.

    The batch dims stay apart: numpy's matmul steps over any batch strides, so an operand
    whose batch dims do not merge (attention's [b, h] read from a [b, t, h, k] buffer) is
    not copied; only row or contraction dims that do not merge are."""
    lperm, rperm, (_, m, k, n), compute = dot_layout(
        op.attrs["dimension_numbers"], lhs.shape, rhs.shape, out.dtype
    )
    nbatch = len(op.attrs["dimension_numbers"][1][0])
    batch_shape = tuple(lhs.shape[i] for i in lperm[:nbatch])
    a = np.transpose(lhs, lperm).reshape(*batch_shape, m, k).astype(compute, copy=False)
    b = np.transpose(rhs, rperm).reshape(*batch_shape, k, n).astype(compute, copy=False)
    if compute == out.dtype:  # out is a contiguous planned buffer: the reshape is a view
        np.matmul(a, b, out=out.reshape(*batch_shape, m, n))
    else:
        out[...] = np.matmul(a, b).reshape(out.shape)


def native_fits(dtype: str, m: int, k: int, n: int) -> bool:
    """Whether the native kernel takes [M,K] x [K,N] GEMMs of this dtype (by name): float32
    or float64, every dim from 1 to NATIVE_MAX_DIM. Checked on the arrays before each run
    and, from the types alone, for the program's choice of threads (workers_can_split)."""
    return dtype in gemm.DTYPES and 1 <= min(m, k, n) and max(m, k, n) <= NATIVE_MAX_DIM


def native_operands(
    op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray
) -> tuple[cache.KernelFn, np.ndarray, np.ndarray, np.ndarray] | None:
    """The native kernel and the [B,M,K], [B,K,N], [B,M,N] views it runs on, where it fits
    (small, one float dtype, whole element strides, the output contiguous and apart from
    the inputs), else None."""
    lperm, rperm, (batch, m, k, n), _ = dot_layout(
        op.attrs["dimension_numbers"], lhs.shape, rhs.shape, out.dtype
    )
    if not lhs.dtype == rhs.dtype == out.dtype or batch < 1:
        return None
    if not native_fits(out.dtype.name, m, k, n):
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


def run_native(op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray, parts: int = 1) -> None:
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
    spin_pool(parts).run(
        kernel, native_address(kernel), list(itertools.pairwise(bounds)), [where] * parts
    )


@functools.cache
def _blas_library() -> Any | None:
    """threadpoolctl's handle on the one BLAS numpy calls (None where it finds none or
    several): setting its thread count is a ~2 us call, cheap enough around one dot."""
    from threadpoolctl import ThreadpoolController

    libraries = ThreadpoolController().select(user_api="blas").lib_controllers
    if len(libraries) > 1:  # scipy (or another package) loaded a BLAS of its own: numpy's one
        numpy_dir = os.path.dirname(os.path.dirname(np.__file__))
        libraries = [
            lib
            for lib in libraries
            if os.path.realpath(lib.filepath).startswith(numpy_dir)
            and os.sep + "numpy" in os.path.realpath(lib.filepath)
        ]
    return libraries[0] if len(libraries) == 1 else None


def run_blas(op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray, threads: int = 1) -> None:
    """dot_general by the BLAS on `threads` of its own threads, the caller's limit restored
    after (the stacked runtime holds the BLAS to one thread outside its dots)."""
    library = _blas_library() if threads > 1 else None
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
    return config.env("SPMD_NATIVE_GEMM")


Variant = tuple[str, int]  # ("blas" | "native", threads)


def workers_can_split(op: Op, lhs: TensorType, rhs: TensorType) -> bool:
    """Whether our workers can split this dot: a batch of float GEMMs the native kernel
    takes (decided from the types; its trials may still keep it unsplit)."""
    out = op.types[0]
    _, _, (batch, m, k, n), _ = dot_layout(
        op.attrs["dimension_numbers"], lhs.shape, rhs.shape, np.dtype(np.float32)
    )
    return (
        native_enabled()
        and lhs.dtype == rhs.dtype == out.dtype
        and batch > 1
        and native_fits(out.dtype, m, k, n)
    )


def use_blas_threads(dots: list[tuple[Op, TensorType, TensorType]]) -> bool:
    """A program's one choice of parallelism for its dots (op, lhs and rhs types): the
    BLAS's own threads, or our spinning workers (which also split its fused kernels).
    Never both: OpenBLAS's idle workers spin for ~0.1 s without yielding, so our workers
    and the caller would share the other core (measured: the 1x1 block step 18 -> 68 ms
    with both). The BLAS's threads where most multiply-adds are in dots our workers cannot
    split (one big GEMM, as on one device: MLP 1x1 8.2 ms vs 13.5 with our workers), else
    ours (2x4 block: 19.4 vs 24 ms)."""
    ours = theirs = 0
    for op, lhs, rhs in dots:
        macs = math.prod(
            dot_layout(op.attrs["dimension_numbers"], lhs.shape, rhs.shape, np.dtype(np.float32))[2]
        )
        if workers_can_split(op, lhs, rhs):
            ours += macs
        else:
            theirs += macs
    return theirs > ours


class DotThreads:
    """Which way one dot runs fastest, measured on its first calls (trials.Fastest): the
    BLAS on one thread or our native kernel for small float GEMMs, and a split of either
    by the program's choice of parallelism (use_blas_threads): the native kernel's batch
    across our spinning workers, or the BLAS on its own threads.

    Measured on this 2-vCPU host: numpy loops over a batch of tiny GEMMs at 17-25 GFLOP/s
    where the native kernel runs 26-37 (GPT's 64 x [32,64]@[64,64]); the BLAS's two threads
    run 8 x [64,256]@[256,256] at 57-59 GFLOP/s against 32-37 on one. Two of our threads
    each calling the BLAS do not scale (40 GFLOP/s together, through ctypes with the GIL
    released, against 70 from two processes): that split is not tried.
    """

    def __init__(self, threads: int, blas_threads: bool = False) -> None:
        self.threads = threads
        self.blas_threads = blas_threads  # the program's choice: see use_blas_threads
        self.trials: Fastest | None = None

    @property
    def kind(self) -> str:
        return self.trials.chosen[0] if self.trials and self.trials.chosen else "blas"

    @property
    def chosen(self) -> int | None:
        """The thread count of the kept variant (None while trials last)."""
        return self.trials.chosen[1] if self.trials and self.trials.chosen else None

    def _candidates(
        self, op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray
    ) -> list[Variant]:
        operands = native_operands(op, lhs, rhs, out) if native_enabled() else None
        macs = math.prod(
            dot_layout(op.attrs["dimension_numbers"], lhs.shape, rhs.shape, out.dtype)[2]
        )
        variants: list[Variant] = [("blas", 1)] + ([("native", 1)] if operands else [])
        if self.threads < 2:
            return variants
        if self.blas_threads:
            if macs >= BLAS_THREADS_MIN_MACS and _blas_library() is not None:
                variants.append(("blas", self.threads))
        elif operands and operands[1].shape[0] > 1 and macs >= NATIVE_SPLIT_MIN_MACS:
            variants.append(("native", self.threads))
        return variants

    def run(self, op: Op, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray) -> None:
        if self.trials is None:
            self.trials = Fastest(self._candidates(op, lhs, rhs, out))
        self.trials.run(lambda variant: _runner(variant[0])(op, lhs, rhs, out, variant[1]))


def _runner(kind: str) -> Any:
    return run_native if kind == "native" else run_blas
