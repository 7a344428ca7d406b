"""Array creation of spmd.numpy: zeros, ones, full, arange, eye, linspace (as iota + math).

Default dtypes follow JAX: float32 for floats, int32 for ints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes, lax
from spmd.errors import ShapeError
from spmd.numpy.core import asarray
from spmd.tracing import type_of


def _shape(shape: Any) -> tuple[int, ...]:
    from spmd.validate import check_shape

    return check_shape("array", shape)


def _dtype_of_value(value: Any, dtype: Any) -> str:
    if dtype is not None:
        return dtypes.canonical(dtype)
    return type_of(value).dtype


def full(shape: Any, fill_value: Any, dtype: Any = None) -> Any:
    """numpy.full; a Python float fills float32, a Python int int32."""
    shape = _shape(shape)
    target = _dtype_of_value(fill_value, dtype)
    if isinstance(fill_value, (int, float, bool, np.generic, np.ndarray)):
        return lax.full(shape, np.asarray(fill_value), target)
    value = lax.convert_element_type(asarray(fill_value), target)
    return lax.broadcast_in_dim(
        value, shape, tuple(range(len(shape) - type_of(value).ndim, len(shape)))
    )


def zeros(shape: Any, dtype: Any = None) -> Any:
    return lax.full(_shape(shape), 0, dtypes.canonical(dtype or dtypes.DEFAULT_FLOAT))


def ones(shape: Any, dtype: Any = None) -> Any:
    return lax.full(_shape(shape), 1, dtypes.canonical(dtype or dtypes.DEFAULT_FLOAT))


empty = zeros


def full_like(a: Any, fill_value: Any, dtype: Any = None, shape: Any = None) -> Any:
    t = type_of(a)
    return full(t.shape if shape is None else shape, fill_value, dtype or t.dtype)


def zeros_like(a: Any, dtype: Any = None, shape: Any = None) -> Any:
    return full_like(a, 0, dtype, shape)


def ones_like(a: Any, dtype: Any = None, shape: Any = None) -> Any:
    return full_like(a, 1, dtype, shape)


empty_like = zeros_like


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def arange(start: Any, stop: Any = None, step: Any = None, dtype: Any = None) -> Any:
    """numpy.arange with static bounds: int arguments give int32, float ones float32."""
    if stop is None:
        start, stop = 0, start
    step = 1 if step is None else step
    if step == 0:
        raise ShapeError("arange step must not be zero")
    if dtype is None:
        ints = _is_int(start) and _is_int(stop) and _is_int(step)
        dtype = dtypes.DEFAULT_INT if ints else dtypes.DEFAULT_FLOAT
    dtype = dtypes.canonical(dtype)
    for bound in (start, stop, step):
        if not isinstance(bound, (int, float, np.integer, np.floating)) or not math.isfinite(bound):
            raise ShapeError(
                f"arange bounds must be finite Python numbers, got {bound!r}",
                hint="arange's length must be known when tracing: use static ints or floats",
            )
    n = _shape((max(math.ceil((stop - start) / step), 0),))[0]
    ramp = lax.iota(dtype, (n,), 0)
    if step != 1:
        ramp = lax.mul(ramp, lax.full((n,), step, dtype))
    if start != 0:
        ramp = lax.add(ramp, lax.full((n,), start, dtype))
    return ramp


def linspace(
    start: float, stop: float, num: int = 50, endpoint: bool = True, dtype: Any = None
) -> Any:
    """numpy.linspace with static scalar bounds (float32 by default)."""
    dtype = dtypes.canonical(dtype or dtypes.DEFAULT_FLOAT)
    compute = dtype if dtypes.is_float(dtype) else dtypes.DEFAULT_FLOAT
    num = _shape((num,))[0]
    div = (num - 1) if endpoint else num
    step = (stop - start) / div if div > 0 else 0.0
    ramp = lax.iota(compute, (num,), 0)
    out = lax.add(lax.mul(ramp, lax.full((num,), step, compute)), lax.full((num,), start, compute))
    if endpoint and num > 1:
        last = lax.iota("int32", (num,), 0)
        is_last = lax.eq(last, lax.full((num,), num - 1, "int32"))
        out = lax.select(is_last, lax.full((num,), stop, compute), out)
    return lax.convert_element_type(out, dtype)


def eye(N: int, M: int | None = None, k: int = 0, dtype: Any = None) -> Any:
    """numpy.eye: ones where column - row == k (iota + compare)."""
    shape = _shape((N, N if M is None else M))
    dtype = dtypes.canonical(dtype or dtypes.DEFAULT_FLOAT)
    diff = lax.sub(lax.iota("int32", shape, 1), lax.iota("int32", shape, 0))
    on = lax.eq(diff, lax.full(shape, k, "int32"))
    return lax.convert_element_type(on, dtype)


identity = eye


def tri(N: int, M: int | None = None, k: int = 0, dtype: Any = None) -> Any:
    shape = _shape((N, N if M is None else M))
    diff = lax.sub(lax.iota("int32", shape, 1), lax.iota("int32", shape, 0))
    on = lax.le(diff, lax.full(shape, k, "int32"))
    return lax.convert_element_type(on, dtypes.canonical(dtype or dtypes.DEFAULT_FLOAT))


def meshgrid(*xs: Any, indexing: str = "xy") -> list[Any]:
    values = [lax.reshape(asarray(x), (type_of(asarray(x)).size,)) for x in xs]
    sizes: Sequence[int] = [type_of(v).size for v in values]
    if indexing == "xy" and len(values) >= 2:
        sizes = [sizes[1], sizes[0], *sizes[2:]]
    out = []
    for i, v in enumerate(values):
        dim = i
        if indexing == "xy" and len(values) >= 2 and i < 2:
            dim = 1 - i
        out.append(lax.broadcast_in_dim(v, tuple(sizes), (dim,)))
    return out
