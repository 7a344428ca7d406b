"""The glue of spmd.numpy: turning inputs into values, JAX's promotion, broadcasting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes, lax
from spmd.errors import DTypeError, ShapeError
from spmd.ir.types import TensorType
from spmd.tracing import Tracer, type_of


def is_value(x: Any) -> bool:
    from spmd.array import Array

    return isinstance(x, (Tracer, Array))


def asarray(x: Any, dtype: Any = None) -> Any:
    """A Tracer or Array for x; numpy inputs keep their dtype (float64 stays float64)."""
    from spmd.array import Array

    if is_value(x):
        return x if dtype is None else astype(x, dtype)
    if isinstance(x, (list, tuple)) and any(is_value(v) for v in _flat(x)):
        return stack_values([asarray(v) for v in x], dtype)
    t = type_of(x)
    target = dtypes.to_numpy(dtypes.canonical(dtype) if dtype else t.dtype)
    try:
        value = np.asarray(x, dtype=target)
    except (OverflowError, ValueError, TypeError) as err:
        raise DTypeError(
            f"cannot make a {target} array of {x!r}: {err}",
            hint="pass numbers that fit the dtype, or choose dtype=",
        ) from None
    weak = t.weak and dtype is None
    return Array(value, weak=weak)


def _flat(x: Any) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return [v for item in x for v in _flat(item)]
    return [x]


def stack_values(values: Sequence[Any], dtype: Any = None) -> Any:
    values = promote_args("array", *values)
    expanded = [lax.expand_dims(v, (0,)) for v in values]
    out = lax.concatenate(expanded, 0)
    return out if dtype is None else astype(out, dtype)


def astype(x: Any, dtype: Any) -> Any:
    return lax.convert_element_type(asarray(x), dtypes.canonical(dtype))


def result_type(*args: Any) -> tuple[str, bool]:
    typed = []
    for a in args:
        if isinstance(a, (str, np.dtype, type)):
            typed.append((dtypes.canonical(a), False))
        else:
            t = type_of(a)
            typed.append((t.dtype, t.weak))
    return dtypes.result_type(*typed)


def promote_args(name: str, *args: Any) -> list[Any]:
    """Promote dtypes (JAX's lattice) and broadcast shapes (numpy's rules)."""
    dtype, weak = result_type(*args)
    values = [_convert(a, dtype, weak) for a in args]
    return broadcast_values(name, *values)


def promote_dtypes(*args: Any) -> list[Any]:
    dtype, weak = result_type(*args)
    return [_convert(a, dtype, weak) for a in args]


def _convert(a: Any, dtype: str, weak: bool) -> Any:
    if is_value(a):
        t = type_of(a)
        if t.dtype == dtype and t.weak == weak:
            return a
        return lax.convert_element_type(a, dtype, weak)
    try:
        value = np.asarray(a, dtype=dtypes.to_numpy(dtype))
    except OverflowError:
        raise DTypeError(
            f"{a!r} does not fit in {dtype}",
            hint="use a smaller number, or an array of a wider dtype",
        ) from None
    return lax.constant(value, weak=weak)


def broadcast_shapes(name: str, *shapes: tuple[int, ...]) -> tuple[int, ...]:
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        sizes = {s[len(s) - ndim + i] for s in shapes if len(s) - ndim + i >= 0}
        sizes.discard(1)
        if len(sizes) > 1:
            raise ShapeError(
                f"{name}: shapes {', '.join(map(str, shapes))} do not broadcast",
                hint="dims must be equal or 1 (aligned from the right)",
            )
        out.append(sizes.pop() if sizes else 1)
    return tuple(out)


def broadcast_to_shape(x: Any, shape: tuple[int, ...]) -> Any:
    t = type_of(x)
    if t.shape == shape:
        return x
    lead = len(shape) - t.ndim
    if lead < 0:
        raise ShapeError(f"cannot broadcast shape {t.shape} to {shape}")
    broadcast_shapes("broadcast_to", t.shape, shape)
    keep = [i for i in range(t.ndim)]
    return lax.broadcast_in_dim(x, shape, tuple(lead + i for i in keep))


def broadcast_values(name: str, *values: Any) -> list[Any]:
    shape = broadcast_shapes(name, *(type_of(v).shape for v in values))
    return [broadcast_to_shape(v, shape) for v in values]


def float_type(x: Any) -> Any:
    """x converted to a float dtype if it is not one (ints -> default float, as JAX)."""
    t = type_of(x)
    if dtypes.is_float(t.dtype):
        return x
    return lax.convert_element_type(x, dtypes.DEFAULT_FLOAT, t.weak)


def normalize_axis(axis: int, ndim: int, name: str = "axis") -> int:
    from spmd.validate import as_int

    axis = as_int(name, axis)
    if not -ndim <= axis < max(ndim, 1):
        raise ShapeError(
            f"{name} {axis} is out of range for an array of rank {ndim}",
            hint=f"use a value in [{-ndim}, {ndim})",
        )
    return axis % ndim if ndim else 0


def type_or_none(x: Any) -> TensorType | None:
    return type_of(x) if x is not None else None
