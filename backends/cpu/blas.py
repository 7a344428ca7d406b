"""One-time priming of the BLAS that numpy calls for our dots (OpenBLAS from numpy's wheels).

Measured here (OpenBLAS 0.3.31, DYNAMIC_ARCH Haswell kernels on an AMD EPYC): until the
process has run one large GEMM (about 384^3 or more, any dtype, any thread), every
single-threaded sgemm of a mid-size shape (64x256x256 to 320^3) runs at ~10 GFLOP/s instead
of ~34; after one 512^3 product they stay fast for the life of the process. Our per-device
GEMMs are exactly those shapes, so the backend runs that product once (~5 ms) before its
first dot.
"""

from __future__ import annotations

import functools

import numpy as np

PRIMING_SIZE = 512


@functools.cache
def prime() -> None:
    """Runs one PRIMING_SIZE^3 float32 matmul, once per process."""
    square = np.ones((PRIMING_SIZE, PRIMING_SIZE), np.float32)
    np.matmul(square, square)
