"""Reductions of spmd.numpy: sum, mean, max, min, prod, argmax, var, std, cumsum, all, any.

Dtypes follow JAX: integer and bool sums accumulate in at least the default int (int32),
means of integers are float32, half-precision means are computed in float32.
"""

from __future__ import annotations

import builtins
import math
from typing import Any

from spmd import dtypes, lax
from spmd.errors import ShapeError
from spmd.numpy.core import asarray, astype, float_type, normalize_axis
from spmd.tracing import type_of


def _axes(x: Any, axis: Any) -> tuple[int, ...]:
    ndim = type_of(x).ndim
    if axis is None:
        return tuple(range(ndim))
    from spmd.validate import as_ints

    axis = as_ints("axis", axis)
    axes = tuple(sorted(normalize_axis(a, ndim) for a in axis))
    if len(set(axes)) != len(axes):
        raise ShapeError(f"repeated axis in {tuple(axis)}")
    return axes


def _keep(out: Any, x: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
    if not keepdims:
        return out
    shape = tuple(1 if i in axes else s for i, s in enumerate(type_of(x).shape))
    return lax.reshape(out, shape)


def _sum_dtype(dtype: str) -> str:
    """JAX's accumulation dtype for sum/prod/cumsum: small ints and bool widen to 32 bits."""
    if dtype == "bool":
        return dtypes.DEFAULT_INT
    if dtypes.is_int(dtype) and dtypes.itemsize(dtype) < 4:
        return "uint32" if dtypes.is_unsigned(dtype) else dtypes.DEFAULT_INT
    return dtype


def _reduce(kind: str, x: Any, axis: Any, keepdims: bool, dtype: Any) -> Any:
    x = asarray(x)
    t = type_of(x)
    target = dtypes.canonical(dtype) if dtype is not None else _sum_dtype(t.dtype)
    x = lax.convert_element_type(x, target, t.weak)
    axes = _axes(x, axis)
    return _keep(lax.reduce(x, kind, axes), x, axes, keepdims)


def sum(a: Any, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
    """numpy.sum; bool and small ints accumulate in int32 (JAX's rule)."""
    return _reduce("sum", a, axis, keepdims, dtype)


def prod(a: Any, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
    return _reduce("prod", a, axis, keepdims, dtype)


def _extremum(kind: str, a: Any, axis: Any, keepdims: bool) -> Any:
    x = asarray(a)
    axes = _axes(x, axis)
    if builtins.any(type_of(x).shape[i] == 0 for i in axes):
        raise ShapeError(
            f"{kind} of an empty axis has no identity (shape {type_of(x).shape})",
            hint="reduce over a non-empty axis",
        )
    return _keep(lax.reduce(x, kind, axes), x, axes, keepdims)


def max(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """numpy.max (amax); an empty reduced axis is an error, as in numpy."""
    return _extremum("max", a, axis, keepdims)


def min(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return _extremum("min", a, axis, keepdims)


amax, amin = max, min


def all(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    x = asarray(a)
    x = x if type_of(x).dtype == "bool" else lax.ne(x, 0)
    axes = _axes(x, axis)
    return _keep(lax.reduce(x, "and", axes), x, axes, keepdims)


def any(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    x = asarray(a)
    x = x if type_of(x).dtype == "bool" else lax.ne(x, 0)
    axes = _axes(x, axis)
    return _keep(lax.reduce(x, "or", axes), x, axes, keepdims)


def _count(x: Any, axes: tuple[int, ...]) -> int:
    return math.prod(type_of(x).shape[i] for i in axes)


def _mean_dtypes(x: Any, dtype: Any) -> tuple[str, str]:
    """(result dtype, compute dtype): half floats are computed in float32."""
    out = dtypes.canonical(dtype) if dtype is not None else type_of(float_type(x)).dtype
    compute = "float32" if out in ("float16", "bfloat16") else out
    return out, compute


def mean(a: Any, axis: Any = None, dtype: Any = None, keepdims: bool = False) -> Any:
    """numpy.mean; integers give float32, float16/bfloat16 are summed in float32."""
    x = asarray(a)
    out_dtype, compute = _mean_dtypes(x, dtype)
    axes = _axes(x, axis)
    total = lax.reduce(lax.convert_element_type(x, compute, type_of(x).weak), "sum", axes)
    result = lax.div(total, float(_count(x, axes)))
    return _keep(lax.convert_element_type(result, out_dtype, type_of(x).weak), x, axes, keepdims)


def var(a: Any, axis: Any = None, dtype: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
    """numpy.var: mean of squared deviations, divided by (n - ddof)."""
    x = asarray(a)
    out_dtype, compute = _mean_dtypes(x, dtype)
    axes = _axes(x, axis)
    xc = lax.convert_element_type(x, compute, type_of(x).weak)
    n = _count(x, axes)
    centre = lax.div(lax.reduce(xc, "sum", axes), float(n))
    kept = tuple(i for i in range(type_of(x).ndim) if i not in axes)
    deviation = lax.sub(xc, lax.broadcast_in_dim(centre, type_of(x).shape, kept))
    squares = lax.reduce(lax.mul(deviation, deviation), "sum", axes)
    result = lax.div(squares, float(n - ddof) if n - ddof > 0 else float("nan"))
    return _keep(lax.convert_element_type(result, out_dtype, type_of(x).weak), x, axes, keepdims)


def std(a: Any, axis: Any = None, dtype: Any = None, ddof: int = 0, keepdims: bool = False) -> Any:
    return lax.sqrt(var(a, axis=axis, dtype=dtype, ddof=ddof, keepdims=keepdims))


def _arg(kind: str, a: Any, axis: Any, keepdims: bool) -> Any:
    x = asarray(a)
    if axis is None:
        x = lax.reshape(x, (type_of(x).size,))
        axis = 0
    axis = normalize_axis(axis, type_of(x).ndim)
    if type_of(x).shape[axis] == 0:
        raise ShapeError(
            f"{kind} of an empty axis (shape {type_of(x).shape})",
            hint="reduce over a non-empty axis",
        )
    out = getattr(lax, kind)(x, axis, "int32")
    if keepdims and type_of(x).ndim == type_of(asarray(a)).ndim:
        out = lax.expand_dims(out, (axis,))
    elif keepdims:
        out = lax.reshape(out, (1,) * type_of(asarray(a)).ndim)
    return out


def argmax(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """numpy.argmax (int32 indices, first occurrence); axis=None flattens."""
    return _arg("argmax", a, axis, keepdims)


def argmin(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return _arg("argmin", a, axis, keepdims)


def cumsum(a: Any, axis: Any = None, dtype: Any = None) -> Any:
    """numpy.cumsum; axis=None flattens first."""
    x = asarray(a)
    target = dtypes.canonical(dtype) if dtype is not None else _sum_dtype(type_of(x).dtype)
    x = astype(x, target)
    if axis is None:
        x = lax.reshape(x, (type_of(x).size,))
        axis = 0
    return lax.cumsum(x, normalize_axis(axis, type_of(x).ndim))
