"""JAX's type promotion, checked on the results of spmd.numpy ops.

The expected tables are written by hand from JAX's documented lattice
(jax.readthedocs.io "Type promotion semantics"), not computed from our own code.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from tests.core.oracle import np_dtype

# (array dtype, array dtype) -> result dtype (never weak).
STRONG = [
    ("int32", "float32", "float32"),
    ("float16", "bfloat16", "float32"),
    ("uint8", "int8", "int16"),
    ("uint16", "int8", "int32"),
    ("uint16", "int16", "int32"),
    ("uint32", "int32", "int64"),
    ("uint8", "uint32", "uint32"),
    ("bool", "int8", "int8"),
    ("bool", "uint8", "uint8"),
    ("bool", "float16", "float16"),
    ("bool", "bool", "bool"),
    ("int8", "float16", "float16"),
    ("int64", "float16", "float16"),
    ("int64", "bfloat16", "bfloat16"),
    ("uint8", "bfloat16", "bfloat16"),
    ("int32", "int64", "int64"),
    ("int8", "int32", "int32"),
    ("float32", "float64", "float64"),
    ("float16", "float32", "float32"),
    ("bfloat16", "float64", "float64"),
    ("int64", "float32", "float32"),
]

# (array dtype, Python scalar) -> (result dtype, weak)
WEAK = [
    ("int32", 1.5, "float32", True),
    ("float16", 1.0, "float16", False),
    ("bfloat16", 2, "bfloat16", False),
    ("bfloat16", 2.5, "bfloat16", False),
    ("int8", 1, "int8", False),
    ("uint8", 3, "uint8", False),
    ("int64", 2, "int64", False),
    ("int8", 1.0, "float32", True),
    ("uint32", 0.5, "float32", True),
    ("bool", 1, "int32", True),
    ("bool", 1.0, "float32", True),
    ("bool", True, "bool", False),
    ("float64", 1, "float64", False),
    ("float32", 7, "float32", False),
]


def _type(x: Any) -> tuple[str, bool]:
    return x.type.dtype, x.type.weak


def _ones(dtype: str) -> np.ndarray:
    return np.ones((2, 3), np_dtype(dtype))


# With x64 off (the default) 64-bit inputs are narrowed first and 64-bit results after
# (checked against JAX 0.10.2): (array dtype, array dtype or Python scalar) -> result dtype.
NARROWED = [
    ("uint32", "int32", "int32"),
    ("int32", "int64", "int32"),
    ("float32", "float64", "float32"),
    ("bfloat16", "float64", "float32"),
    ("uint64", "int8", "int32"),
    ("int64", "float16", "float16"),
    ("int64", 2, "int32"),
    ("float64", 1, "float32"),
    ("uint64", 3, "uint32"),
]


@pytest.mark.parametrize("a,b,expected", NARROWED, ids=[f"{a}-{b}" for a, b, _ in NARROWED])
def test_x64_off_narrows_like_jax(a: str, b: Any, expected: str) -> None:
    with spmd.enable_x64(False):
        y = _ones(b) if isinstance(b, str) else b
        for op in (snp.add, snp.multiply):
            assert _type(op(_ones(a), y)) == (expected, False)
        assert np.asarray(spmd.jit(snp.add)(_ones(a), y)).dtype == np_dtype(expected)


# The lattice tables hold 64-bit types: they run with x64 on.
@pytest.mark.usefixtures("x64_on")
@pytest.mark.parametrize("a,b,expected", STRONG, ids=[f"{a}-{b}" for a, b, _ in STRONG])
def test_arrays_promote_along_jax_lattice(a: str, b: str, expected: str) -> None:
    x, y = _ones(a), _ones(b)
    for op in (snp.add, snp.multiply, snp.maximum):
        assert _type(op(x, y)) == (expected, False), op.__name__
        assert _type(op(y, x)) == (expected, False), f"{op.__name__} (swapped)"
    assert _type(snp.where(x > 0, x, y)) == (expected, False)
    assert _type(snp.concatenate([x, y])) == (expected, False)
    assert np.asarray(spmd.jit(snp.add)(x, y)).dtype == np_dtype(expected)


@pytest.mark.usefixtures("x64_on")
@pytest.mark.parametrize(
    "a,scalar,expected,weak", WEAK, ids=[f"{a}-{type(s).__name__}" for a, s, _, _ in WEAK]
)
def test_python_scalars_are_weakly_typed(a: str, scalar: Any, expected: str, weak: bool) -> None:
    x = _ones(a)
    for op in (snp.add, snp.multiply):
        assert _type(op(x, scalar)) == (expected, weak)
        assert _type(op(scalar, x)) == (expected, weak)
    traced = spmd.jit(lambda v: snp.add(v, scalar))(x)
    assert np.asarray(traced).dtype == np_dtype(expected)


@pytest.mark.parametrize(
    "a,b,expected",
    [
        (1, 2, ("int32", True)),
        (1, 2.0, ("float32", True)),
        (1.0, 2.0, ("float32", True)),
        (True, 2, ("int32", True)),
        (True, False, ("bool", False)),
    ],
)
def test_two_python_scalars_stay_weak(a: Any, b: Any, expected: tuple[str, bool]) -> None:
    assert _type(snp.add(a, b)) == expected


def test_weak_result_promotes_like_a_scalar_afterwards() -> None:
    weak = snp.multiply(np.ones(3, np.int32), 0.5)  # float32, weak
    assert _type(snp.add(weak, np.ones(3, np.float16))) == ("float16", False)


@pytest.mark.parametrize(
    "dtype,expected",
    [("int32", "float32"), ("int8", "float32"), ("float16", "float16"), ("bool", "float32")],
)
def test_true_divide_and_transcendentals_give_floats(dtype: str, expected: str) -> None:
    x = _ones(dtype)
    assert snp.true_divide(x, x).type.dtype == expected
    assert snp.exp(x).type.dtype == expected
