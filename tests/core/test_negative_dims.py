"""spmd.lax's dim arguments count from the end, as numpy's: the IR gets the dim counted from
the front, so jit agrees with eager (before, the op's type kept the dim a negative axis named
and jit raised InternalError "reference of argmax gave shape (3,), its type says (3, 4)")."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
from spmd import lax
from spmd.errors import ShapeError

X = np.arange(24, dtype=np.float32).reshape(2, 3, 4) % 7

CASES = [
    (lambda v: lax.argmax(v, -1), lambda v: np.argmax(v, -1)),
    (lambda v: lax.argmin(v, -2), lambda v: np.argmin(v, -2)),
    (lambda v: lax.reduce_sum(v, (-1, 0)), lambda v: v.sum((2, 0))),
    (lambda v: lax.reduce_max(v, (-2,)), lambda v: v.max(1)),
    (lambda v: lax.cumsum(v, -1), lambda v: np.cumsum(v, -1)),
    (lambda v: lax.cumsum(v, -3, reverse=True), lambda v: np.cumsum(v[::-1], 0)[::-1]),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_a_negative_dim_means_the_same_under_jit_and_eagerly(case):
    fn, oracle = CASES[case]
    np.testing.assert_array_equal(np.asarray(fn(X)), oracle(X))
    np.testing.assert_array_equal(np.asarray(spmd.jit(fn)(X)), oracle(X))


def test_a_dim_out_of_range_is_still_refused():
    with pytest.raises(ShapeError, match="axis -4 is out of range for an array of rank 3"):
        lax.argmax(X, -4)
    with pytest.raises(ShapeError, match="out of range"):
        spmd.jit(lambda v: lax.reduce_sum(v, (3,)))(X)
