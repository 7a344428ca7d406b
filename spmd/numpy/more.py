"""More of numpy's names over spmd values: logaddexp, exp2, pad, nan_to_num, diag, median,
and the dtype helpers (finfo, iinfo, promote_types, issubdtype and the abstract types)."""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

from spmd import dtypes, lax
from spmd.errors import ShapeError
from spmd.numpy import reductions, ufuncs
from spmd.numpy.core import asarray, float_type, normalize_axis, promote_args
from spmd.tracing import describe_loc, type_of

floating, integer, inexact, number, signedinteger, unsignedinteger = (
    np.floating,
    np.integer,
    np.inexact,
    np.number,
    np.signedinteger,
    np.unsignedinteger,
)
bool = np.bool_
dtype = np.dtype


def logaddexp(x1: Any, x2: Any) -> Any:
    """log(exp(x1) + exp(x2)) without overflow: max + log1p(exp(-|x1 - x2|))."""
    a, b = promote_args("logaddexp", float_type(asarray(x1)), float_type(asarray(x2)))
    top = ufuncs.maximum(a, b)
    gap = ufuncs.abs(ufuncs.subtract(a, b))
    out = ufuncs.add(top, ufuncs.log1p(ufuncs.exp(ufuncs.negative(gap))))
    return ufuncs.where(ufuncs.isinf(top), top, out)  # -inf and +inf pass through


def exp2(x: Any) -> Any:
    return ufuncs.power(2.0, float_type(asarray(x)))


def pad(array: Any, pad_width: Any, mode: str = "constant", constant_values: Any = 0) -> Any:
    """numpy.pad, mode 'constant' (one value): pad_width is n, (lo, hi) or one pair per dim."""
    if mode != "constant":
        raise ShapeError(
            f"pad mode={mode!r} is not supported", describe_loc(), "use mode='constant'"
        )
    x = asarray(array)
    ndim = type_of(x).ndim
    widths = np.broadcast_to(np.asarray(pad_width, dtype=object), (ndim, 2)).tolist()
    from spmd.validate import as_int

    config = [(as_int("pad width", lo), as_int("pad width", hi), 0) for lo, hi in widths]
    if any(lo < 0 or hi < 0 for lo, hi, _ in config):
        raise ShapeError(f"pad widths must be >= 0, got {pad_width!r}", describe_loc())
    value = lax.convert_element_type(asarray(constant_values), type_of(x).dtype)
    return lax.pad(x, value, config)


def nan_to_num(
    x: Any, copy: bool = True, nan: float = 0.0, posinf: Any = None, neginf: Any = None
) -> Any:
    """NaN -> nan, +inf -> the dtype's max (or posinf), -inf -> its min (or neginf)."""
    v = asarray(x)
    t = type_of(v)
    if not dtypes.is_float(t.dtype):
        return v
    info = ml_dtypes.finfo(dtypes.to_numpy(t.dtype))
    v = ufuncs.where(ufuncs.isnan(v), nan, v)
    v = ufuncs.where(lax.eq(v, float("inf")), float(info.max) if posinf is None else posinf, v)
    return ufuncs.where(lax.eq(v, float("-inf")), float(info.min) if neginf is None else neginf, v)


def diag(v: Any, k: int = 0) -> Any:
    """numpy.diag: a 1-d v gives a matrix with v on diagonal k; a 2-d v gives its diagonal."""
    from spmd.numpy.indexing import diagonal

    x = asarray(v)
    t = type_of(x)
    if t.ndim == 2:
        return diagonal(x, k)
    if t.ndim != 1:
        raise ShapeError(f"diag needs a 1-d or 2-d array, got shape {t.shape}", describe_loc())
    n = t.shape[0] + abs(k)
    rows = lax.iota("int32", (n, n), 0)
    cols = lax.iota("int32", (n, n), 1)
    on = lax.eq(lax.sub(cols, rows), lax.full((n, n), k, "int32"))
    # entry (i, i + k) is v[i]: indexed by its column j (v[j - k]) for k >= 0, by its row i
    # (v[i + k]) for k < 0; either way v padded by |k| in front
    padded = lax.pad(x, lax.full((), 0, t.dtype), [(abs(k), 0, 0)])
    along = lax.broadcast_in_dim(padded, (n, n), (1,) if k >= 0 else (0,))
    return lax.select(on, along, lax.full((n, n), 0, t.dtype))


def median(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """numpy.median: the middle of the sorted values (mean of the two middles when even)."""
    from spmd.numpy.extras import sort
    from spmd.numpy.manipulation import ravel

    x = float_type(asarray(a))
    if axis is None:
        x, axis = ravel(x), 0
    axis = normalize_axis(axis, type_of(x).ndim)
    n = type_of(x).shape[axis]
    if n == 0:
        raise ShapeError("median of an empty axis", describe_loc())
    s = sort(x, axis=axis)
    lo = lax.slice_in_dim(s, (n - 1) // 2, (n - 1) // 2 + 1, 1, axis)
    hi = lax.slice_in_dim(s, n // 2, n // 2 + 1, 1, axis)
    mid = ufuncs.multiply(ufuncs.add(lo, hi), 0.5)
    return mid if keepdims else reductions.sum(mid, axis=axis)


def finfo(d: Any) -> Any:
    return ml_dtypes.finfo(dtypes.to_numpy(dtypes.canonical(d)))


def iinfo(d: Any) -> Any:
    return np.iinfo(dtypes.to_numpy(dtypes.canonical(d)))


def promote_types(a: Any, b: Any) -> np.dtype:
    """JAX's promotion of two dtypes (not numpy's: int32 with float16 is float16)."""
    name, _ = dtypes.promote((dtypes.canonical(a), False), (dtypes.canonical(b), False))
    return dtypes.to_numpy(name)


def issubdtype(arg1: Any, arg2: Any) -> bool:
    """numpy.issubdtype, knowing bfloat16 is a float."""
    name = dtypes.canonical(arg1)
    if isinstance(arg2, type) and issubclass(arg2, np.generic):
        if name == "bfloat16":
            return issubclass(np.floating, arg2) or arg2 in (np.floating, np.inexact)
        return np.issubdtype(dtypes.to_numpy(name), arg2)
    return name == dtypes.canonical(arg2)
