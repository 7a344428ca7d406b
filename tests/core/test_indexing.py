"""x[idx] and x.at[idx] against numpy's own indexing, eagerly and under jit."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd.errors import ShapeError, TracerError
from tests.core.oracle import assert_close

X = np.arange(2 * 5 * 4, dtype=np.float32).reshape(2, 5, 4) - 17.0
I = np.array([[0, 3], [-1, 2]])

INDICES = {
    "int": 1,
    "negative_int": (-1, -2),
    "slice": (slice(1, None), slice(None, 4, 2)),
    "negative_step": (slice(None), slice(None, None, -2)),
    "negative_step_bounds": (0, slice(3, 0, -1), slice(-1, None, -3)),
    "empty_slice": (slice(None), slice(4, 1)),
    "ellipsis": (Ellipsis, 1),
    "ellipsis_middle": (0, Ellipsis, slice(1, 3)),
    "newaxis": (None, 0, None, slice(1, 3)),
    "newaxis_ellipsis": (Ellipsis, None),
    "array": np.array([1, 0, 1]),
    "list": [0, -1],
    "array_2d_on_axis1": (slice(None), I),
    "two_arrays_adjacent": (slice(None), np.array([0, 4]), np.array([[1], [3]])),
    "two_arrays_separated": (np.array([1, 0]), slice(1, 4), np.array([3, 0])),
    "int_and_array_separated": (0, slice(None), np.array([3, 1, 1])),
    "array_then_negative_step": (np.array([1]), slice(None, None, -1)),
    "array_and_newaxis": (None, np.array([1, 0]), Ellipsis, 2),
    "all_advanced": (np.array([0, 1]), np.array([2, 4]), np.array([3, 0])),
    "concrete_bool_mask": (slice(None), np.array([True, False, True, False, True])),
}


def _run(fn: Any, jitted: bool, *args: Any) -> np.ndarray:
    if jitted:
        return np.asarray(spmd.jit(fn)(*args))
    return np.asarray(fn(*[snp.asarray(a) for a in args]))


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", list(INDICES))
def test_getitem_matches_numpy(name: str, jitted: bool) -> None:
    idx = INDICES[name]
    got = _run(lambda x: x[idx], jitted, X)
    assert_close(got, X[idx])


@pytest.mark.parametrize("dtype", ["int32", "bool", "bfloat16"])
def test_getitem_keeps_dtype(dtype: str) -> None:
    x = snp.asarray(X).astype(dtype)
    got = np.asarray(x[:, ::-1, np.array([2, 0])])
    assert str(got.dtype) == dtype
    np.testing.assert_array_equal(got, np.asarray(x)[:, ::-1, [2, 0]])


def test_traced_index_array_is_gathered() -> None:
    f = spmd.jit(lambda x, i: x[1, i])
    i = np.array([[4, -1], [0, 2]], np.int32)
    assert_close(np.asarray(f(X, i)), X[1, i])


def test_traced_scalar_index_uses_gather() -> None:
    f = spmd.jit(lambda x, i: x[:, i])
    assert_close(np.asarray(f(X, np.int32(3))), X[:, 3])


def test_out_of_range_traced_indices_are_clamped_like_jax() -> None:
    f = spmd.jit(lambda x, i: x[0, 0, i])
    np.testing.assert_array_equal(np.asarray(f(X, np.array([9, -9], np.int32))), X[0, 0, [3, 0]])


def test_static_out_of_range_int_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="out of bounds"):
        snp.asarray(X)[2]


def test_too_many_indices_is_a_shape_error() -> None:
    with pytest.raises(ShapeError, match="too many indices"):
        snp.asarray(X)[0, 0, 0, 0]


def test_traced_boolean_mask_error_names_the_users_line() -> None:
    def f(x):
        return x[x > 0]

    line = inspect.getsourcelines(f)[1] + 1
    with pytest.raises(TracerError, match="data-dependent shape") as info:
        spmd.jit(f)(X)
    assert f"test_indexing.py:{line}" in str(info.value)


# .at[] --------------------------------------------------------------------------------


def _numpy_update(idx: Any, values: Any, how: str) -> np.ndarray:
    out = X.copy()
    if how == "set":
        out[idx] = values
    elif how == "add":
        np.add.at(out, idx, values)
    elif how == "multiply":
        out[idx] = out[idx] * values
    elif how == "min":
        out[idx] = np.minimum(out[idx], values)
    elif how == "max":
        out[idx] = np.maximum(out[idx], values)
    return out


AT_INDICES = [
    "int",
    "negative_step",
    "newaxis",
    "array_2d_on_axis1",
    "two_arrays_separated",
    "ellipsis_middle",
    "concrete_bool_mask",
]


@pytest.mark.parametrize("jitted", [False, True], ids=["eager", "jit"])
@pytest.mark.parametrize("how", ["set", "add", "multiply", "min", "max"])
@pytest.mark.parametrize("name", AT_INDICES)
def test_at_update_matches_numpy(name: str, how: str, jitted: bool) -> None:
    idx = INDICES[name]
    values = np.linspace(-3, 3, X[idx].size, dtype=np.float32).reshape(X[idx].shape)
    got = _run(lambda x, v: getattr(x.at[idx], how)(v), jitted, X, values)
    assert_close(got, _numpy_update(idx, values, how))


def test_at_add_accumulates_repeated_indices() -> None:
    x = np.zeros(4, np.float32)
    got = spmd.jit(lambda v: v.at[np.array([1, 1, 3, 1])].add(2.0))(x)
    np.testing.assert_array_equal(np.asarray(got), [0, 6, 0, 2])


def test_at_set_broadcasts_a_scalar_and_keeps_dtype() -> None:
    x = snp.asarray(np.arange(6, dtype=np.int32).reshape(2, 3))
    got = x.at[:, 1:].set(-1)
    assert got.type.dtype == "int32"
    np.testing.assert_array_equal(np.asarray(got), [[0, -1, -1], [3, -1, -1]])


def test_at_get_is_getitem() -> None:
    idx = INDICES["two_arrays_adjacent"]
    assert_close(np.asarray(snp.asarray(X).at[idx].get()), X[idx])


def test_at_set_with_a_traced_index_and_grad_flows_to_the_values() -> None:
    def f(x, v, i):
        return snp.sum(x.at[i].set(v) * 2.0)

    i = np.array([0, 3], np.int32)
    grads = spmd.grad(f, argnums=(0, 1))(X[0], np.ones((2, 4), np.float32), i)
    expected_x = np.full((5, 4), 2.0, np.float32)
    expected_x[[0, 3]] = 0.0
    assert_close(np.asarray(grads[0]), expected_x)
    assert_close(np.asarray(grads[1]), np.full((2, 4), 2.0))


def test_getitem_gradient_scatters_back() -> None:
    grad = spmd.grad(lambda x: snp.sum(x[np.array([0, 0, 2]), ::-1]))(X[0])
    expected = np.zeros((5, 4), np.float32)
    expected[0] = 2.0
    expected[2] = 1.0
    assert_close(np.asarray(grad), expected)
