"""The CPU backend's dots: split and unsplit runs give numpy's product, and each dot keeps
whichever its first calls measured faster."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as jnp
from backends.cpu import dots


def _batched_dot() -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((8, 64, 32)).astype(np.float32)
    b = rng.standard_normal((8, 32, 48)).astype(np.float32)
    graph = spmd.jit(lambda a, b: jnp.matmul(a, b)).lower(a, b).graph
    (op,) = [op for op in graph.ops if op.name == "dot_general"]
    return op, a, b


@pytest.mark.parametrize("split_is_faster", [True, False])
def test_dot_threads_keeps_the_faster_variant_and_both_match_numpy(
        monkeypatch: pytest.MonkeyPatch, split_is_faster: bool) -> None:
    op, a, b = _batched_dot()
    monkeypatch.setattr(dots, "DOT_SPLIT_MIN_MACS", 1)  # small enough to split
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "0")  # the BLAS variants only (native: test_cpu_gemm)
    threads = dots.DotThreads(2)
    ran: list[int] = []
    now = [0.0]  # a fake clock: each run advances it by its variant's cost
    cost = {2: 1.0, 1: 2.0} if split_is_faster else {2: 2.0, 1: 1.0}
    real = dots.run_dot

    def recording(op: object, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray,
                  used: int = 1) -> None:
        ran.append(used)
        now[0] += cost[used]
        real(op, lhs, rhs, out, used)

    monkeypatch.setattr(dots, "run_dot", recording)
    monkeypatch.setattr(dots.time, "perf_counter", lambda: now[0])
    for _ in range(2 * dots.DotThreads.TRIALS + 3):
        out = np.empty((8, 64, 48), np.float32)
        threads.run(op, a, b, out)
        np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    assert set(ran[:2 * dots.DotThreads.TRIALS]) == {1, 2}  # both variants were tried
    assert threads.chosen == (2 if split_is_faster else 1)
    assert ran[-3:] == [threads.chosen] * 3


def test_one_thread_never_tries_a_split(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "0")  # the BLAS only: nothing left to measure
    op, a, b = _batched_dot()
    threads = dots.DotThreads(1)
    out = np.empty((8, 64, 48), np.float32)
    threads.run(op, a, b, out)
    assert threads.chosen == 1
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
