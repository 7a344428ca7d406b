"""Host memory tuning done by the CPU backend: glibc malloc thresholds (results of a step
reuse freed pages instead of faulting fresh ones) and its opt-out, and the pool of results
too large for malloc to keep."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import spmd
from backends.cpu import allocator, compile_program
from backends.cpu.result_pool import POOLED_MIN_BYTES, ResultPool

STEP = textwrap.dedent("""
    import resource
    import numpy as np
    import spmd
    import spmd.numpy as jnp

    step = spmd.jit(lambda a, b, g: (a - 0.1 * jnp.tanh(g), b - g @ g))
    a, b, g = (np.ones((512, 512), np.float32) for _ in range(3))
    for _ in range(3):
        a, b = step(a, b, g)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        a, b = step(a, b, g)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _faults_per_step(tuning: str) -> float:
    env = {**os.environ, "SPMD_MALLOC_TUNING": tuning, "SPMD_BACKEND": "cpu"}
    out = subprocess.run(
        [sys.executable, "-c", STEP],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    return int(out.split()[-1]) / 10


@pytest.mark.skipif(not allocator.tune(), reason="not glibc")
def test_step_results_reuse_freed_pages_instead_of_faulting_new_ones() -> None:
    """Two 1 MB results per step: ~240 fresh pages per step untuned (glibc trims the heap
    each step), none once tuned."""
    assert _faults_per_step("1") < 100 < _faults_per_step("0")


def test_opt_out_leaves_malloc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPMD_MALLOC_TUNING", "0")
    assert allocator.tune.__wrapped__() is False


def test_large_results_reuse_a_buffer_only_once_the_caller_dropped_it() -> None:
    """Results above the mmap threshold come from a pool; a held result is never reused."""
    pool = ResultPool()
    shape, dtype = (POOLED_MIN_BYTES // 4,), np.dtype(np.float32)
    first = pool.take(1, shape, dtype)
    first_address = first.ctypes.data
    held = pool.take(1, shape, dtype)  # `first` is still held: a second buffer
    assert not np.shares_memory(first, held)
    del first
    again = pool.take(1, shape, dtype)
    assert again.ctypes.data == first_address  # dropped by the caller: reused
    view = again[:10]  # a view holds its base
    del again
    assert not np.shares_memory(pool.take(1, shape, dtype), view)
    small = pool.take(2, (4,), dtype)
    assert small is not pool.take(2, (4,), dtype)  # small results are plain np.empty


def test_a_program_returning_a_large_result_twice_keeps_both_values() -> None:
    graph = spmd.jit(lambda x: x * 2).lower(np.ones(POOLED_MIN_BYTES // 4, np.float32)).graph
    exe = compile_program(graph)
    a = exe([np.full(POOLED_MIN_BYTES // 4, 1, np.float32)])[0]
    b = exe([np.full(POOLED_MIN_BYTES // 4, 3, np.float32)])[0]
    assert a[0] == 2 and b[0] == 6  # a was held, so b got another buffer
    del a
    c = exe([np.full(POOLED_MIN_BYTES // 4, 5, np.float32)])[0]
    assert b[0] == 6 and c[0] == 10
