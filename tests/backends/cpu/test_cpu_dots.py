"""The CPU backend's dots: split and unsplit runs give numpy's product, and each dot keeps
whichever its first calls measured faster."""

from __future__ import annotations

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


@pytest.mark.parametrize("fastest", [("blas", 1), ("blas", 2), ("blas_threaded", 2)])
def test_dot_threads_keeps_the_fastest_blas_variant_and_all_match_numpy(
        monkeypatch: pytest.MonkeyPatch, fastest: tuple[str, int]) -> None:
    op, a, b = _batched_dot()
    monkeypatch.setattr(dots, "DOT_SPLIT_MIN_MACS", 1)  # small enough to split
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "0")  # the BLAS variants only (native: test_cpu_gemm)
    threads = dots.DotThreads(2)
    ran: list[tuple[str, int]] = []
    now = [0.0]  # a fake clock: each run advances it by its variant's cost
    cost = {("blas", 1): 2.0, ("blas", 2): 3.0, ("blas_threaded", 2): 4.0}
    cost[fastest] = 1.0
    real_dot, real_threaded = dots.run_dot, dots.run_blas_threaded

    depth = [0]  # run_blas_threaded calls (the recording) run_dot: only the outer call counts

    def recording(kind: str, real: object) -> object:
        def run(op: object, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray,
                used: int = 1) -> None:
            if depth[0] == 0:
                ran.append((kind, used))
                now[0] += cost[(kind, used)]
            depth[0] += 1
            real(op, lhs, rhs, out, used)
            depth[0] -= 1
        return run

    monkeypatch.setattr(dots, "run_blas_threaded", recording("blas_threaded", real_threaded))
    monkeypatch.setattr(dots, "run_dot", recording("blas", real_dot))
    monkeypatch.setattr("backends.cpu.trials.time.perf_counter", lambda: now[0])
    for _ in range(3 * Fastest.TRIALS + 3):
        out = np.empty((8, 64, 48), np.float32)
        threads.run(op, a, b, out)
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    assert set(ran) == set(cost)  # every variant was tried
    assert (threads.kind, threads.chosen) == fastest
    assert ran[-3:] == [fastest] * 3


def test_blas_threaded_restores_the_callers_thread_count() -> None:
    from threadpoolctl import threadpool_info, threadpool_limits

    op, a, b = _batched_dot()
    out = np.empty((8, 64, 48), np.float32)
    with threadpool_limits(1, "blas"):
        dots.run_blas_threaded(op, a, b, out, 2)
        assert all(info["num_threads"] == 1 for info in threadpool_info()
                   if info["user_api"] == "blas")
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_one_thread_never_tries_a_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "0")  # the BLAS only: nothing left to measure
    op, a, b = _batched_dot()
    threads = dots.DotThreads(1)
    out = np.empty((8, 64, 48), np.float32)
    threads.run(op, a, b, out)
    assert threads.chosen == 1
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
