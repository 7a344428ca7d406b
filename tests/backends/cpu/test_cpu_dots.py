"""The CPU backend's dots: the BLAS on one thread or its own threads gives numpy's product,
and each dot keeps whichever its first calls measured faster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spmd
import spmd.numpy as jnp
from backends.cpu import dots
from backends.cpu.trials import Fastest


def _batched_dot() -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 64, 32)).astype(np.float32)
    b = rng.standard_normal((8, 32, 48)).astype(np.float32)
    graph = spmd.jit(lambda a, b: jnp.matmul(a, b)).lower(a, b).graph
    (op,) = [op for op in graph.ops if op.name == "dot_general"]
    return op, a, b


@pytest.mark.parametrize("threaded_is_faster", [True, False])
def test_dot_the_native_kernel_cannot_take_tries_the_blas_threads_and_keeps_the_faster(
    monkeypatch: pytest.MonkeyPatch, threaded_is_faster: bool
) -> None:
    op, a, b = _batched_dot()
    monkeypatch.setattr(dots, "BLAS_THREADS_MIN_MACS", 1)  # big enough to try the BLAS threads
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "0")  # the BLAS variants only (native: test_cpu_gemm)
    threads = dots.DotThreads(2, blas_threads=True)
    ran: list[int] = []
    now = [0.0]  # a fake clock: each run advances it by its variant's cost
    cost = {2: 1.0, 1: 2.0} if threaded_is_faster else {2: 2.0, 1: 1.0}
    real = dots.run_blas

    def recording(
        op: object, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray, used: int = 1
    ) -> None:
        ran.append(used)
        now[0] += cost[used]
        real(op, lhs, rhs, out, used)

    monkeypatch.setattr(dots, "run_blas", recording)
    monkeypatch.setattr("backends.cpu.trials.time.perf_counter", lambda: now[0])
    for _ in range(2 * Fastest.TRIALS + 3):
        out = np.empty((8, 64, 48), np.float32)
        threads.run(op, a, b, out)
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    assert set(ran[: 2 * Fastest.TRIALS]) == {1, 2}  # both variants were tried
    assert (threads.kind, threads.chosen) == ("blas", 2 if threaded_is_faster else 1)
    assert ran[-3:] == [threads.chosen] * 3


def test_blas_threads_are_the_callers_again_after_a_threaded_dot() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    op, a, b = _batched_dot()
    out = np.empty((8, 64, 48), np.float32)
    with threadpool_limits(1, "blas"):
        dots.run_blas(op, a, b, out, 2)
        assert all(
            info["num_threads"] == 1 for info in threadpool_info() if info["user_api"] == "blas"
        )
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_one_thread_never_tries_a_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "0")  # the BLAS only: nothing left to measure
    op, a, b = _batched_dot()
    threads = dots.DotThreads(1)
    out = np.empty((8, 64, 48), np.float32)
    threads.run(op, a, b, out)
    assert threads.chosen == 1
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def _dot_types(lhs: tuple[int, ...], rhs: tuple[int, ...]) -> tuple[object, object, object]:
    graph = (
        spmd.jit(lambda a, b: jnp.matmul(a, b))
        .lower(np.ones(lhs, np.float32), np.ones(rhs, np.float32))
        .graph
    )
    (op,) = [op for op in graph.ops if op.name == "dot_general"]
    return op, graph.types[op.inputs[0]], graph.types[op.inputs[1]]


def test_a_program_uses_the_blas_threads_where_most_work_is_in_dots_our_workers_cannot_split() -> (
    None
):
    batched = _dot_types((8, 64, 256), (8, 256, 256))  # 8 GEMMs the native kernel takes
    one_gemm = _dot_types((128, 256), (256, 1024))  # one GEMM: only the BLAS splits it
    too_big = _dot_types((2, 512, 512), (2, 512, 512))  # beyond NATIVE_MAX_DIM
    assert dots.workers_can_split(*batched)
    assert not dots.workers_can_split(*one_gemm) and not dots.workers_can_split(*too_big)
    assert not dots.use_blas_threads([batched])
    assert dots.use_blas_threads([one_gemm]) and dots.use_blas_threads([too_big])
    assert dots.use_blas_threads([batched, one_gemm, one_gemm])  # 67M + 67M vs 34M
    assert not dots.use_blas_threads([batched, batched, batched, one_gemm])
    assert not dots.use_blas_threads([])  # no dots: the workers split the kernels


def test_a_blas_threads_program_splits_no_kernel_and_tries_no_native_split() -> None:
    from backends.cpu import compile_program

    x, w = np.ones((128, 256), np.float32), np.ones((256, 1024), np.float32)
    exe = compile_program(
        spmd.jit(lambda x, w: jnp.tanh(x @ w) * 2).lower(x, w).graph, num_threads=2
    )
    assert exe.blas_threads
    assert all(len(s.chunks) == 1 for s in exe.steps if s.kind == "kernel")
    np.testing.assert_allclose(exe([x, w])[0], np.tanh(x @ w) * 2, rtol=1e-5)
    (dot,) = [s for s in exe.steps if s.kind == "dot"]
    assert ("native", 2) not in dot.dot_threads.trials.variants


def test_numpys_blas_is_found_when_scipy_loaded_its_own() -> None:
    """scipy's wheel brings a second OpenBLAS; the BLAS-threads choice must still find numpy's
    (it was disabled for the whole suite once autoshard's tests imported scipy)."""
    code = (
        "import scipy.linalg, numpy\n"
        "from backends.cpu import dots\n"
        "lib = dots._blas_library()\n"
        "print('numpy' in lib.filepath if lib is not None else 'none')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    assert done.stdout.strip().splitlines()[-1] == "True", done.stdout + done.stderr
