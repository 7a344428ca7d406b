"""User errors raise their own spmd.errors class, pointing at the user's line, with a hint."""

from __future__ import annotations

import os

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import errors, lax

HERE = os.path.basename(__file__)
with open(__file__, encoding="utf-8") as _source:
    SOURCE_LINES = _source.read().split("\n")


def line_of(marker: str) -> int:
    """The line of this file that holds `marker` (a comment on the offending call)."""
    found = [i + 1 for i, text in enumerate(SOURCE_LINES) if text.rstrip().endswith(marker)]
    assert len(found) == 1, marker
    return found[0]


def check(err: pytest.ExceptionInfo, marker: str) -> None:
    text = str(err.value)
    assert f"{HERE}:{line_of(marker)}" in text, text
    assert "hint:" in text, text
    assert isinstance(err.value, errors.SpmdError)


X = np.ones((3, 4), np.float32)
W = np.ones((5, 2), np.float32)


def test_matmul_shape_mismatch_is_shape_error():
    def f(x, w):
        return snp.matmul(x, w)  # <- matmul mismatch

    with pytest.raises(errors.ShapeError) as err:
        spmd.jit(f)(X, W)
    check(err, "# <- matmul mismatch")
    assert "(3, 4)" in str(err.value) and "(5, 2)" in str(err.value)


def test_dot_general_contracting_mismatch_is_shape_error():
    def f(x, w):
        return lax.dot_general(x, w, (((1,), (0,)), ((), ())))  # <- dot mismatch

    with pytest.raises(errors.ShapeError) as err:
        spmd.jit(f)(X, W)
    check(err, "# <- dot mismatch")


def test_add_of_unbroadcastable_shapes_is_shape_error():
    def f(x, y):
        return x + y  # <- add mismatch

    with pytest.raises(errors.ShapeError) as err:
        spmd.jit(f)(X, np.ones((5,), np.float32))
    check(err, "# <- add mismatch")


def test_lax_add_needs_equal_dtypes():
    def f(x, y):
        return lax.add(x, y)  # <- lax dtype mismatch

    with pytest.raises(errors.DTypeError) as err:
        spmd.jit(f)(X, X.astype(np.int32))
    check(err, "# <- lax dtype mismatch")


def test_unknown_dtype_is_dtype_error():
    def f(x):
        return x.astype("float8_e9m9")  # <- unknown dtype

    with pytest.raises(errors.DTypeError) as err:
        spmd.jit(f)(X)
    check(err, "# <- unknown dtype")


def test_python_if_on_a_traced_value_is_tracer_error():
    def f(x):
        if x.sum() > 0:  # <- python if
            return x
        return -x

    with pytest.raises(errors.TracerError) as err:
        spmd.jit(f)(X)
    check(err, "# <- python if")
    assert "where" in str(err.value)


@pytest.mark.parametrize("convert,marker", [(int, "# <- int()"), (float, "# <- float()")])
def test_int_or_float_of_a_traced_value_is_tracer_error(convert, marker):
    def f(x):
        if convert is int:
            return x * int(x[0, 0])  # <- int()
        return x * float(x[0, 0])  # <- float()

    with pytest.raises(errors.TracerError) as err:
        spmd.jit(f)(X)
    check(err, marker)


def test_bad_reshape_is_shape_error():
    def f(x):
        return snp.reshape(x, (5, 3))  # <- bad reshape

    with pytest.raises(errors.ShapeError) as err:
        spmd.jit(f)(X)
    check(err, "# <- bad reshape")
    assert "12" in str(err.value)


def test_lax_reshape_error_points_at_the_user_line():
    def f(x):
        return lax.reshape(x, (7,))  # <- lax reshape

    with pytest.raises(errors.ShapeError) as err:
        spmd.jit(f)(X)
    check(err, "# <- lax reshape")
