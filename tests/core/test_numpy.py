"""spmd.numpy against numpy: each case is one function of a module `m`, run with m=numpy on
float64 copies of the inputs (the oracle) and with m=spmd.numpy, eagerly and under jit."""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd.errors import ShapeError
from tests.core.oracle import assert_close, jax_dtype, np_dtype, rand

RNG = np.random.default_rng(7)
FLOATS = ("float32", "float16", "bfloat16", "float64")
NUMERIC = FLOATS + ("int32", "int64")
ALL = NUMERIC + ("bool",)

CASES: list[tuple[str, Callable[..., Any], list[tuple[int, ...]], tuple[str, ...]]] = []


def case(
    name: str,
    fn: Callable[..., Any],
    shapes: list[tuple[int, ...]],
    dtypes: tuple[str, ...] = ("float32",),
) -> None:
    CASES.append((name, fn, shapes, dtypes))


# reductions
S3 = [(3, 4, 5)]
case("sum", lambda m, x: m.sum(x), S3, ALL)
case("sum_axis_keepdims", lambda m, x: m.sum(x, axis=(0, 2), keepdims=True), S3, NUMERIC)
case("sum_dtype", lambda m, x: m.sum(x, axis=1, dtype="float32"), S3, ("int32", "float16"))
case("sum_empty", lambda m, x: m.sum(x, axis=0), [(0, 3)], ("float32", "int32"))
case("mean", lambda m, x: m.mean(x, axis=-1), S3, NUMERIC)
case("mean_all", lambda m, x: m.mean(x), [(7,)], FLOATS)
case("mean_0d", lambda m, x: m.mean(x), [()], ("float32", "int32"))
case("max", lambda m, x: m.max(x, axis=1), S3, NUMERIC)
case("min_keepdims", lambda m, x: m.min(x, axis=(1, 2), keepdims=True), S3, NUMERIC)
case("amax", lambda m, x: m.amax(x), S3, ("float32", "int32"))
case("prod", lambda m, x: m.prod(x, axis=0), [(3, 4)], ("float32", "float64", "int32"))
case("argmax", lambda m, x: m.argmax(x, axis=1), S3, NUMERIC)
case("argmin_flat", lambda m, x: m.argmin(x), S3, ("float32", "int32"))
case("argmax_keepdims", lambda m, x: m.argmax(x, axis=2, keepdims=True), S3)
case("var", lambda m, x: m.var(x, axis=1), S3, FLOATS + ("int32",))
case("var_ddof", lambda m, x: m.var(x, axis=(0, 2), ddof=1, keepdims=True), S3)
case("std", lambda m, x: m.std(x), S3, FLOATS)
case("cumsum", lambda m, x: m.cumsum(x, axis=1), S3, NUMERIC)
case("cumsum_flat", lambda m, x: m.cumsum(x), [(3, 4)], ("float32", "int32", "bool"))
case("all_any", lambda m, x: m.stack([m.all(x, axis=0), m.any(x, axis=0)]), [(4, 3)], ALL)

# manipulation
case("reshape", lambda m, x: m.reshape(x, (4, -1)), S3, ALL)
case("transpose", lambda m, x: m.transpose(x), S3, ALL)
case("transpose_axes", lambda m, x: m.transpose(x, (1, 2, 0)), S3)
case("swapaxes", lambda m, x: m.swapaxes(x, 0, 2), S3)
case("moveaxis", lambda m, x: m.moveaxis(x, 0, -1), S3, ("int32",))
case("moveaxis_many", lambda m, x: m.moveaxis(x, (0, 1), (2, 0)), S3)
case("expand_squeeze", lambda m, x: m.squeeze(m.expand_dims(x, (0, 2)), 0), S3)
case("squeeze_all", lambda m, x: m.squeeze(x), [(1, 3, 1)])
case("broadcast_to", lambda m, x: m.broadcast_to(x, (2, 3, 4)), [(3, 1)], ALL)
case("broadcast_arrays", lambda m, x, y: m.stack(m.broadcast_arrays(x, y)), [(3, 1), (4,)])
case("concatenate", lambda m, x, y: m.concatenate([x, y], axis=1), [(2, 3), (2, 5)], ALL)
case("concatenate_flat", lambda m, x, y: m.concatenate([x, y], axis=None), [(2, 3), (4,)])
case("stack", lambda m, x, y: m.stack([x, y], axis=-1), [(2, 3), (2, 3)], ALL)
case("split_sections", lambda m, x: m.stack(m.split(x, 2, axis=1)), [(3, 4)])
case("split_indices", lambda m, x: m.concatenate(m.split(x, [1, 4], axis=0)[::-1]), [(6, 2)])
case("ravel", lambda m, x: m.ravel(x), S3)
case("flip", lambda m, x: m.flip(x, axis=(0, 2)), S3, ALL)
case("flip_all", lambda m, x: m.flip(x), [(3, 4)])
case("roll", lambda m, x: m.roll(x, 2, axis=1), [(3, 5)], ALL)
case("roll_negative_many", lambda m, x: m.roll(x, (-1, 7), axis=(0, 1)), [(3, 5)])
case("roll_flat", lambda m, x: m.roll(x, 4), [(3, 5)])
case("tril", lambda m, x: m.tril(x), [(4, 5)], ALL)
case("triu_k", lambda m, x: m.triu(x, k=-1), [(2, 4, 3)], ("float32", "int32"))
case("repeat", lambda m, x: m.repeat(x, 3, axis=1), [(2, 3)], ("float32", "int32"))
case("repeat_flat", lambda m, x: m.repeat(x, 2), [(2, 3)])
case("tile", lambda m, x: m.tile(x, (2, 1, 3)), [(2, 3)], ("float32", "bool"))
case("where", lambda m, c, x, y: m.where(c > 0, x, y), [(3, 4), (4,), (3, 1)], NUMERIC)
case("clip", lambda m, x: m.clip(x, -1, 1.5), [(3, 4)], FLOATS)

# products
case("matmul", lambda m, x, y: m.matmul(x, y), [(3, 4), (4, 5)], NUMERIC)
case("matmul_batched", lambda m, x, y: x @ y, [(2, 1, 3, 4), (5, 4, 2)])
case("matmul_vec_mat", lambda m, x, y: m.matmul(x, y), [(4,), (2, 4, 3)])
case("matmul_mat_vec", lambda m, x, y: m.matmul(x, y), [(2, 3, 4), (4,)])
case("matmul_batch_mat", lambda m, x, y: x @ y, [(2, 3, 3, 4), (4, 5)])
case("matmul_mat_batch", lambda m, x, y: x @ y, [(3, 4), (2, 3, 4, 5)])
case("matmul_vec_vec", lambda m, x, y: m.matmul(x, y), [(4,), (4,)], ("float32", "int32"))
case("dot_nd", lambda m, x, y: m.dot(x, y), [(2, 3, 4), (5, 4, 2)])
case("dot_scalar", lambda m, x, y: m.dot(x, y), [(), (3,)])
case("outer", lambda m, x, y: m.outer(x, y), [(3,), (2, 2)], ("float32", "int32"))
case("inner", lambda m, x, y: m.inner(x, y), [(2, 4), (3, 4)])
case("tensordot", lambda m, x, y: m.tensordot(x, y, axes=([0, 2], [2, 1])), [(3, 4, 5), (2, 5, 3)])
case("tensordot_int", lambda m, x, y: m.tensordot(x, y, 1), [(3, 4), (4, 2)])
EINSUMS = [
    ("ij,jk->ik", [(3, 4), (4, 5)]),
    ("ij,ij->", [(3, 4), (3, 4)]),
    ("ii->i", [(4, 4)]),
    ("ii", [(3, 3)]),
    ("ij->ji", [(3, 4)]),
    ("ij", [(3, 4)]),
    ("i,j", [(3,), (4,)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("...i,...i", [(3, 4), (4,)]),
    ("bij,bjk,bkl->bil", [(2, 3, 4), (2, 4, 5), (2, 5, 3)]),
    ("ijk->", [(2, 3, 4)]),
    ("ij,kl->ijkl", [(2, 3), (1, 2)]),
    ("iij->j", [(3, 3, 2)]),
    ("ab,bc,ca", [(2, 3), (3, 4), (4, 2)]),
    ("i...,i...->...", [(3, 1, 4), (3, 2, 1)]),
    ("ij,j->i", [(3, 0), (0,)]),
]
for spec, shapes in EINSUMS:
    case(f"einsum[{spec}]", lambda m, *xs, s=spec: m.einsum(s, *xs), shapes)
case(
    "einsum_repeated_operand",
    lambda m, x: m.einsum("ij,ij,ij->i", x, x, x),
    [(3, 4)],
    ("float32", "int32"),
)

# indexing helpers
case("take", lambda m, x: m.take(x, np.array([[0, 2], [-1, 1]]), axis=1), [(3, 4)], ALL)
case("take_flat", lambda m, x: m.take(x, np.array([5, 0, 11])), [(3, 4)])
ALONG = RNG.integers(-4, 4, size=(3, 4)).astype(np.int32)
case("take_along_axis", lambda m, x: m.take_along_axis(x, ALONG, axis=1), [(3, 4)], ALL)
case(
    "take_along_axis_broadcast", lambda m, x: m.take_along_axis(x, ALONG[:1] % 3, axis=0), [(3, 4)]
)
case("diagonal", lambda m, x: m.diagonal(x, 1), [(4, 5)])
case("trace", lambda m, x: m.trace(x), [(4, 4)], ("float32", "int32"))


def _widen(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64) if x.dtype.kind == "f" or str(x.dtype) == "bfloat16" else x


def _inputs(name: str, shapes: list[tuple[int, ...]], dtype: str) -> list[np.ndarray]:
    """Inputs seeded by the case's name, so each test sees the same values in any order."""
    rng = np.random.default_rng(zlib.crc32(f"{name}-{dtype}".encode()))
    low, high = (-2, 3) if dtype.startswith("int") else (-2.0, 2.0)
    return [rand(rng, s, dtype, low, high) for s in shapes]


PARAMS = [(name, fn, shapes, dtype) for name, fn, shapes, dts in CASES for dtype in dts]


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name,fn,shapes,dtype", PARAMS, ids=[f"{p[0]}-{p[3]}" for p in PARAMS])
def test_function_matches_numpy(
    name: str, fn: Callable[..., Any], shapes: list[tuple[int, ...]], dtype: str, jitted: bool
) -> None:
    args = _inputs(name, shapes, dtype)
    run = spmd.jit(lambda *xs: fn(snp, *xs)) if jitted else (lambda *xs: fn(snp, *xs))
    got = np.asarray(run(*args))
    expected = np.asarray(fn(np, *[_widen(a) for a in args]))
    tolerance_dtype = str(got.dtype)
    scale = 8.0 if name.startswith(("var", "std", "einsum", "matmul", "dot", "tensordot")) else 4.0
    assert_close(
        got,
        expected.astype(np.float64)
        if got.dtype.kind == "f" or tolerance_dtype == "bfloat16"
        else expected,
        tolerance_dtype,
        scale,
    )


# dtype rules (JAX's, not numpy's) -------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,expected",
    [
        ("bool", "int32"),
        ("int8", "int32"),
        ("uint8", "uint32"),
        ("int32", "int32"),
        ("int64", "int64"),
        ("float16", "float16"),
        ("bfloat16", "bfloat16"),
    ],
)
def test_sum_and_cumsum_accumulate_small_ints_in_32_bits(dtype: str, expected: str) -> None:
    x = np.ones((2, 3), np_dtype(dtype))
    assert np.asarray(snp.sum(x)).dtype == jax_dtype(expected)
    assert np.asarray(spmd.jit(snp.cumsum)(x)).dtype == jax_dtype(expected)


@pytest.mark.parametrize(
    "dtype,expected",
    [
        ("int32", "float32"),
        ("bool", "float32"),
        ("float16", "float16"),
        ("bfloat16", "bfloat16"),
        ("float64", "float64"),
    ],
)
def test_mean_and_var_give_floats(dtype: str, expected: str) -> None:
    x = np.ones((4,), np_dtype(dtype))
    assert np.asarray(snp.mean(x)).dtype == jax_dtype(expected)
    assert np.asarray(snp.var(x)).dtype == jax_dtype(expected)


@pytest.mark.parametrize("shapes", [((2, 3, 4), (4, 5)), ((3, 4), (2, 3, 4, 5))])
def test_matmul_with_a_matrix_side_is_one_dot_without_broadcast_copies(
    shapes: tuple[tuple[int, ...], tuple[int, ...]],
) -> None:
    """x[..., m, k] @ w[k, n] contracts w as is (one GEMM of ... * m rows), as jnp does,
    instead of broadcasting w over x's batch dims into a batch of copies."""
    graph = spmd.jit(lambda x, w: x @ w).lower(*(np.ones(s, np.float32) for s in shapes)).graph
    assert [op.name for op in graph.ops if op.name in ("dot_general", "broadcast_in_dim")] == [
        "dot_general"
    ]


def test_half_precision_mean_is_computed_in_float32() -> None:
    x = np.full((4096,), 1.0 + 2**-9, np.float16)  # a float16 running sum would lose bits
    assert float(snp.mean(x)) == pytest.approx(float(x[0]), rel=1e-3)


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda: snp.arange(5), ("int32", np.arange(5))),
        (lambda: snp.arange(1, 2.0, 0.25), ("float32", np.arange(1, 2.0, 0.25))),
        (lambda: snp.arange(10, 0, -3), ("int32", np.arange(10, 0, -3))),
        (lambda: snp.zeros((2, 3)), ("float32", np.zeros((2, 3)))),
        (lambda: snp.ones(4, dtype="int64"), ("int64", np.ones(4))),
        (lambda: snp.full((2,), 1.5), ("float32", np.full((2,), 1.5))),
        (lambda: snp.full((2,), 7), ("int32", np.full((2,), 7))),
        (lambda: snp.zeros_like(np.ones(3, np.int64)), ("int64", np.zeros(3))),
        (lambda: snp.ones_like(np.ones(3, np.float16), dtype="bool"), ("bool", np.ones(3))),
        (lambda: snp.full_like(np.ones((2, 2), np.float32), 3), ("float32", np.full((2, 2), 3.0))),
        (lambda: snp.eye(3, 4, k=1), ("float32", np.eye(3, 4, k=1))),
        (lambda: snp.eye(3, dtype="int32"), ("int32", np.eye(3))),
        (lambda: snp.linspace(0, 1, 7), ("float32", np.linspace(0, 1, 7))),
        (lambda: snp.linspace(2, 3, 4, endpoint=False), ("float32", np.linspace(2, 3, 4, False))),
        (lambda: snp.empty((0, 2)), ("float32", np.empty((0, 2)))),
    ],
)
def test_creation_functions_use_jax_default_dtypes(
    make: Callable[[], Any], expected: tuple[str, np.ndarray]
) -> None:
    dtype, values = expected
    for got in (make(), spmd.jit(make)()):
        got = np.asarray(got)
        assert got.dtype == jax_dtype(dtype)
        assert_close(got, values.astype(np.float64) if got.dtype.kind == "f" else values)


def test_split_into_unequal_sections_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="equal sections"):
        snp.split(np.ones(5), 2)


def test_max_of_an_empty_axis_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="empty axis"):
        snp.max(np.ones((0, 3)), axis=0)


def test_reshape_with_two_unknown_dims_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="-1"):
        snp.reshape(np.ones(6), (-1, -1))


def test_roll_is_lowered_to_slice_and_concatenate() -> None:
    graph = spmd.jit(lambda x: snp.roll(x, 1, axis=0)).lower(np.ones((4, 3), np.float32)).graph
    names = {op.name for op in graph.ops}
    assert {"slice", "concatenate"} <= names and "gather" not in names


def test_einsum_with_mismatched_sizes_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="sizes"):
        snp.einsum("ij,jk->ik", np.ones((2, 3)), np.ones((4, 2)))
