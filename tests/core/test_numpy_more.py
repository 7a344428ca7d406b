"""The numpy names added for JAX users, against numpy itself."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd.errors import ShapeError
from tests.core.oracle import assert_close

RNG = np.random.default_rng(0)


def test_logaddexp_and_exp2_match_numpy():
    a = np.array([-1000.0, 0.5, np.inf, -np.inf, 3.0])
    b = np.array([-1000.0, 2.0, 1.0, -np.inf, np.inf])
    assert_close(snp.logaddexp(a, b), np.logaddexp(a, b))  # the tolerance of its dtype
    np.testing.assert_allclose(
        np.asarray(spmd.jit(snp.exp2)(np.array([1.0, -3.0]))), np.exp2([1.0, -3.0])
    )


@pytest.mark.parametrize("width", [1, (1, 2), ((0, 1), (2, 0))])
def test_pad_constant(width):
    x = np.arange(6).reshape(2, 3)
    np.testing.assert_array_equal(
        np.asarray(snp.pad(x, width, constant_values=7)), np.pad(x, width, constant_values=7)
    )
    with pytest.raises(ShapeError):
        snp.pad(x, 1, mode="reflect")
    with pytest.raises(ShapeError):
        snp.pad(x, -1)


def test_nan_to_num_uses_the_dtypes_extremes():
    x = np.array([np.nan, np.inf, -np.inf, 1.5], np.float32)
    np.testing.assert_array_equal(np.asarray(snp.nan_to_num(x)), np.nan_to_num(x))
    np.testing.assert_array_equal(
        np.asarray(snp.nan_to_num(x, nan=-1.0, posinf=9.0)), np.nan_to_num(x, nan=-1.0, posinf=9.0)
    )


@pytest.mark.parametrize("k", [0, 1, 2, -1, -3])
def test_diag_builds_and_reads_diagonals(k):
    v = np.arange(1.0, 4.0)
    np.testing.assert_array_equal(np.asarray(snp.diag(v, k)), np.diag(v, k))
    m = np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(np.asarray(snp.diag(m, k)), np.diag(m, k))


@pytest.mark.parametrize("axis, keepdims", [(None, False), (0, False), (1, True), (-1, False)])
def test_median_matches_numpy(axis, keepdims):
    for shape in ((4, 5), (5, 4)):
        x = RNG.standard_normal(shape)
        assert_close(
            snp.median(x, axis=axis, keepdims=keepdims), np.median(x, axis=axis, keepdims=keepdims)
        )


def test_dtype_helpers():
    assert snp.finfo(snp.bfloat16).eps == ml_dtypes.finfo(ml_dtypes.bfloat16).eps
    assert snp.iinfo("int8").max == 127 and snp.dtype("float32") == np.float32
    assert snp.promote_types("int32", "float16") == np.float16  # JAX's lattice, not numpy's
    assert snp.issubdtype(snp.float32, snp.floating) and snp.issubdtype("bfloat16", snp.inexact)
    assert snp.issubdtype(np.int32, snp.integer) and not snp.issubdtype("int8", snp.floating)
    assert isinstance(snp.ones(2), snp.ndarray)
