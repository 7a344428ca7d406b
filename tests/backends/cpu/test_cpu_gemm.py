"""The native small-GEMM kernel matches a float64 matmul for many shapes, and the CPU dots
try it beside the BLAS and keep the variant their first calls measured fastest."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
from backends.cpu import dots, gemm
from backends.cpu.trials import Fastest

SHAPES = [  # (B, M, K, N)
    (1, 1, 1, 1),
    (1, 1, 64, 64),
    (3, 5, 7, 13),
    (2, 4, 1, 24),
    (2, 9, 3, 1),
    (1, 17, 33, 65),
    (4, 32, 64, 64),
    (3, 64, 16, 64),
    (2, 6, 5, 31),
    (1, 128, 128, 128),
    (5, 3, 2, 47),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_native_gemm_matches_a_float64_matmul(shape: tuple[int, int, int, int], dtype: str) -> None:
    batch, m, k, n = shape
    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal((batch, m, k)).astype(dtype)
    b = rng.standard_normal((batch, k, n)).astype(dtype)
    out = np.full((batch, m, n), np.nan, dtype)
    gemm.run_gemm(0, batch, a, b, out)
    expected = a.astype(np.float64) @ b.astype(np.float64)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(out, expected, rtol=tolerance, atol=tolerance * np.sqrt(k))


def test_native_gemm_writes_only_its_batch_range() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((5, 6, 7)).astype(np.float32)
    b = rng.standard_normal((5, 7, 9)).astype(np.float32)
    out = np.zeros((5, 6, 9), np.float32)
    gemm.run_gemm(1, 3, a, b, out)
    np.testing.assert_allclose(out[1:3], a[1:3] @ b[1:3], rtol=1e-5, atol=1e-5)
    assert not out[0].any() and not out[3:].any()


def test_column_tiles_cover_every_column_once() -> None:
    for n in (1, 7, 8, 9, 24, 25, 64, 100):
        tiles = gemm.column_tiles(n, 8)
        columns = [c for first, widths in tiles for c in range(first, first + sum(widths))]
        assert columns == list(range(n))
        assert all(w <= 8 for _, widths in tiles for w in widths)


def _dot(
    lhs_shape: tuple[int, ...],
    rhs_shape: tuple[int, ...],
    dtype: str = "float32",
    transpose: bool = False,
) -> tuple[object, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.standard_normal(lhs_shape).astype(dtype)
    b = rng.standard_normal(rhs_shape).astype(dtype)

    def f(a: object, b: object) -> object:
        lhs_contract = 1 if transpose else 2
        return spmd.lax.dot_general(a, b, (((lhs_contract,), (1,)), ((0,), (0,))))

    graph = spmd.jit(f).lower(a, b).graph
    (op,) = [op for op in graph.ops if op.name == "dot_general"]
    return op, a, b


def _run_with_fake_clock(
    monkeypatch: pytest.MonkeyPatch,
    variants: dots.DotThreads,
    op: object,
    a: np.ndarray,
    b: np.ndarray,
    expected: np.ndarray,
    cost: dict[tuple[str, int], float],
    calls: int,
) -> list[tuple[str, int]]:
    ran: list[tuple[str, int]] = []
    now = [0.0]  # each run advances the fake clock by its variant's cost
    real = {"blas": dots.run_blas, "native": dots.run_native}

    def recording(kind: str) -> object:
        def run(
            op: object, lhs: np.ndarray, rhs: np.ndarray, out: np.ndarray, threads: int = 1
        ) -> None:
            ran.append((kind, threads))
            now[0] += cost[(kind, threads)]
            real[kind](op, lhs, rhs, out, threads)

        return run

    monkeypatch.setattr(dots, "run_blas", recording("blas"))
    monkeypatch.setattr(dots, "run_native", recording("native"))
    monkeypatch.setattr("backends.cpu.trials.time.perf_counter", lambda: now[0])
    for _ in range(calls):
        out = np.full_like(expected, -1)
        variants.run(op, a, b, out)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-4)
    return ran


VARIANTS = [("blas", 1), ("native", 1), ("native", 2)]


@pytest.mark.parametrize("fastest", VARIANTS)
def test_batched_dot_keeps_the_fastest_of_blas_native_and_native_split(
    monkeypatch: pytest.MonkeyPatch, fastest: tuple[str, int]
) -> None:
    """A batched dot the native kernel takes tries it unsplit and split over our workers
    beside the BLAS on one thread (not the BLAS's own threads: see dots.DotThreads)."""
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "1")
    monkeypatch.setattr(dots, "BLAS_THREADS_MIN_MACS", 1)
    monkeypatch.setattr(dots, "NATIVE_SPLIT_MIN_MACS", 1)
    op, a, b = _dot((8, 32, 64), (8, 64, 24))
    cost = dict(zip(VARIANTS, [3.0, 2.0, 2.5]))
    cost[fastest] = 1.0
    variants = dots.DotThreads(2)
    trials = len(VARIANTS) * Fastest.TRIALS
    ran = _run_with_fake_clock(monkeypatch, variants, op, a, b, a @ b, cost, trials + 3)
    assert set(ran[:trials]) == set(cost)  # every variant was tried
    assert (variants.kind, variants.chosen) == fastest
    assert ran[trials:] == [fastest] * 3


@pytest.mark.parametrize("threads", [1, 2])
def test_small_dots_try_no_split(monkeypatch: pytest.MonkeyPatch, threads: int) -> None:
    """Below the split thresholds (or on one thread) only the unsplit variants are tried."""
    monkeypatch.setenv("SPMD_NATIVE_GEMM", "1")
    op, a, b = _dot((8, 32, 64), (8, 64, 24))
    cost = {("blas", 1): 2.0, ("native", 1): 1.0}
    variants = dots.DotThreads(threads)
    ran = _run_with_fake_clock(monkeypatch, variants, op, a, b, a @ b, cost, 2 * Fastest.TRIALS + 2)
    assert set(ran) == set(cost)
    assert (variants.kind, variants.chosen) == ("native", 1)


def test_native_disabled_or_unfit_dots_try_only_the_blas(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dots, "BLAS_THREADS_MIN_MACS", 1)
    cost = {("blas", 1): 1.0, ("blas", 2): 2.0, ("native", 1): 0.5, ("native", 2): 0.5}
    cases = [
        ("0", _dot((8, 32, 64), (8, 64, 24))),  # disabled by the env var
        ("1", _dot((2, 8, 300), (2, 300, 8))),  # k above NATIVE_MAX_DIM
        ("1", _dot((2, 8, 16), (2, 16, 8), "int32")),
    ]  # not a float dtype
    for flag, (op, a, b) in cases:
        monkeypatch.setenv("SPMD_NATIVE_GEMM", flag)
        variants = dots.DotThreads(2, blas_threads=True)
        ran = _run_with_fake_clock(
            monkeypatch, variants, op, a, b, a @ b, cost, 2 * Fastest.TRIALS + 1
        )
        assert set(ran) == {("blas", 1), ("blas", 2)}  # one thread and the BLAS's own
        assert (variants.kind, variants.chosen) == ("blas", 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(
    "layout", ["ab", "aT", "bT", "aTbT", "sliced", "every_other_column", "reversed"]
)
def test_native_gemm_reads_strided_operands(layout: str, dtype: str) -> None:
    """a with any strides; b packed first where its columns are not contiguous."""
    rng = np.random.default_rng(2)
    batch, m, k, n = 3, 7, 13, 19
    a = rng.standard_normal((batch, k, m) if "aT" in layout else (batch, m, k)).astype(dtype)
    b = rng.standard_normal((batch, n, k) if "bT" in layout else (batch, k, n)).astype(dtype)
    a = np.swapaxes(a, 1, 2) if "aT" in layout else a
    b = np.swapaxes(b, 1, 2) if "bT" in layout else b
    if layout == "sliced":  # every other row of a and of b, and b's first n of 2n columns
        a = rng.standard_normal((batch, 2 * m, k)).astype(dtype)[:, ::2]
        b = rng.standard_normal((batch, 2 * k, 2 * n)).astype(dtype)[:, ::2, :n]
    if layout == "reversed":  # negative strides: a's rows and b's columns backwards
        a, b = a[:, ::-1], b[:, :, ::-1]
    if layout == "every_other_column":  # b packed along its rows
        b = rng.standard_normal((batch, k, 2 * n)).astype(dtype)[:, :, ::2]
    out = np.full((batch, m, n), np.nan, dtype)
    gemm.run_gemm(0, batch, a, b, out)
    tolerance = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(
        out, a.astype(np.float64) @ b.astype(np.float64), rtol=tolerance, atol=tolerance * 4
    )


def test_native_dot_takes_a_transposed_lhs() -> None:
    op, a, b = _dot((4, 24, 16), (4, 24, 40), transpose=True)  # lhs contracted on its dim 1
    out = np.empty((4, 16, 40), np.float32)
    assert dots.native_operands(op, a, b, out) is not None
    dots.run_native(op, a, b, out, 2)
    np.testing.assert_allclose(out, np.swapaxes(a, -1, -2) @ b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("parts", [1, 2, 3])
def test_native_split_matches_numpy(parts: int) -> None:
    op, a, b = _dot((5, 12, 20), (5, 20, 33), "float64")
    out = np.full((5, 12, 33), np.nan)
    dots.run_native(op, a, b, out, parts)
    np.testing.assert_allclose(out, a @ b, rtol=1e-12, atol=1e-12)


def test_native_refuses_an_output_that_overlaps_an_input() -> None:
    op, a, b = _dot((2, 8, 8), (2, 8, 8))
    assert dots.native_operands(op, a, b, a) is None
    assert dots.native_operands(op, a, b, np.empty_like(a)) is not None
