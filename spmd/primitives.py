"""The primitive builders: one thin function per registry entry, with JAX's lax names, that
binds its op (select, reshape, dot_general, ..., and add, exp, ... made from the registry).

Core: the ops' derivative rules emit with it, so it imports no op family (spmd.ops) and
nothing public; spmd.lax re-exports it. Binary ops need equal shapes and dtypes, except that
a Python scalar takes the other operand's type.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd.errors import ShapeError
from spmd.ir.opdef import REGISTRY, OpDef
from spmd.ir.types import TensorType
from spmd.tracing import bind, type_of
from spmd.validate import as_ints, check_shape


def _scalar_like(value: Any, like: TensorType) -> Any:
    t = TensorType((), like.dtype, like.weak)
    scalar = np.asarray(value, dtype=dtypes.to_numpy(like.dtype))
    const = bind("constant", value=scalar, weak=t.weak)
    return broadcast_in_dim(const, like.shape, ()) if like.shape else const


_SCALARS = (int, float, bool, np.generic)


def _pair(x: Any, y: Any) -> tuple[Any, Any]:
    if isinstance(y, _SCALARS) and not isinstance(x, _SCALARS):
        return x, _scalar_like(y, type_of(x))
    if isinstance(x, _SCALARS) and not isinstance(y, _SCALARS):
        return _scalar_like(x, type_of(y)), y
    return x, y


def _elementwise(opdef: OpDef) -> Any:
    """The builder of an elementwise op (named by its OpDef.public)."""
    name = opdef.name
    if opdef.public is not None and opdef.public.arity == 2:

        def op(x: Any, y: Any) -> Any:
            return bind(name, *_pair(x, y))

        op.__doc__ = f"Elementwise `{name}` (lax semantics: equal shapes and dtypes)."
    else:

        def op(x: Any) -> Any:
            return bind(name, x)

        op.__doc__ = f"Elementwise `{name}`."
    op.__name__ = name
    return op


def __getattr__(name: str) -> Any:
    """add, sub, exp, bitwise_and, ...: made from the registry entry whose `public` names it
    (a new op: no line here), on first use (rules run at trace time, once every op family
    has registered its ops)."""
    for opdef in REGISTRY.values():
        if opdef.public is not None and opdef.public.lax == name:
            # cached, so the next use is a plain attribute (none shadows a builtin used here)
            globals()[name] = _elementwise(opdef)
            return globals()[name]
    raise AttributeError(f"module 'spmd.primitives' has no attribute {name!r}")


def elementwise_functions() -> dict[str, Any]:
    """Every elementwise builder of the registry as it stands, by its lax name."""
    names = [d.public.lax for d in REGISTRY.values() if d.public]
    return {name: globals()[name] if name in globals() else __getattr__(name) for name in names}


def select(pred: Any, on_true: Any, on_false: Any) -> Any:
    """pred ? on_true : on_false, elementwise (all three the same shape)."""
    on_true, on_false = _pair(on_true, on_false)
    return bind("select", pred, on_true, on_false)


def convert_element_type(x: Any, new_dtype: Any, weak: bool = False) -> Any:
    dtype = dtypes.canonical(new_dtype)
    t = type_of(x)
    if t.dtype == dtype and t.weak == weak:
        return x
    return bind("convert_element_type", x, new_dtype=dtype, weak=weak)


def constant(value: Any, dtype: Any = None, weak: bool = False) -> Any:
    arr = np.asarray(
        value, dtype=None if dtype is None else dtypes.to_numpy(dtypes.canonical(dtype))
    )
    # x64 off: a float64/int64 value is stored narrowed (wrapping as JAX's astype), so the
    # constant's value and its type agree
    arr = arr.astype(dtypes.to_numpy(dtypes.canonical(arr.dtype)), copy=False)
    return bind("constant", value=arr, weak=weak)


def full(shape: Sequence[int], fill_value: Any, dtype: Any = None) -> Any:
    dtype = dtypes.canonical(dtype if dtype is not None else np.asarray(fill_value).dtype)
    scalar = constant(np.asarray(fill_value, dtype=dtypes.to_numpy(dtype)))
    return broadcast_in_dim(scalar, tuple(shape), ())


def full_like(x: Any, fill_value: Any, dtype: Any = None) -> Any:
    t = type_of(x)
    return full(t.shape, fill_value, dtype if dtype is not None else t.dtype)


def zeros_like(x: Any) -> Any:
    return full_like(x, 0)


def iota(dtype: Any, shape: Sequence[int], dimension: int = 0) -> Any:
    shape = check_shape("iota", shape)
    return bind("iota", dtype=dtypes.canonical(dtype), shape=tuple(shape), dimension=dimension)


def broadcast_in_dim(x: Any, shape: Sequence[int], broadcast_dimensions: Sequence[int]) -> Any:
    shape, dims = check_shape("broadcast_in_dim", shape), tuple(broadcast_dimensions)
    if type_of(x).shape == shape and dims == tuple(range(len(shape))):
        return x
    return bind("broadcast_in_dim", x, shape=shape, broadcast_dimensions=dims)


def broadcast(x: Any, sizes: Sequence[int]) -> Any:
    """Add leading dims of the given sizes."""
    t = type_of(x)
    n = len(sizes)
    return broadcast_in_dim(x, tuple(sizes) + t.shape, tuple(range(n, n + t.ndim)))


def reshape(x: Any, new_sizes: Sequence[int]) -> Any:
    new_sizes = check_shape("reshape", new_sizes)
    if type_of(x).shape == new_sizes:
        return x
    return bind("reshape", x, new_sizes=new_sizes)


def transpose(x: Any, permutation: Sequence[int]) -> Any:
    permutation = tuple(int(p) for p in permutation)
    if permutation == tuple(range(len(permutation))):
        return x
    return bind("transpose", x, permutation=permutation)


def _from_end(axis: int, x: Any) -> int:
    """A negative dim counts from the end (the IR's dims do not); out of range: the op says."""
    ndim = type_of(x).ndim
    return axis + ndim if -ndim <= axis < 0 else axis


def reduce(x: Any, kind: str, axes: Sequence[int]) -> Any:
    """Reduce over `axes` with kind in sum/max/min/prod/and/or."""
    axes = tuple(sorted(_from_end(a, x) for a in as_ints("reduce axes", axes)))
    if not axes:
        return x
    return bind("reduce", x, kind=kind, axes=axes)


def reduce_sum(x: Any, axes: Sequence[int]) -> Any:
    return reduce(x, "sum", axes)


def reduce_max(x: Any, axes: Sequence[int]) -> Any:
    return reduce(x, "max", axes)


def reduce_min(x: Any, axes: Sequence[int]) -> Any:
    return reduce(x, "min", axes)


def reduce_prod(x: Any, axes: Sequence[int]) -> Any:
    return reduce(x, "prod", axes)


def argmax(x: Any, axis: int, index_dtype: Any = "int32") -> Any:
    axis = _from_end(int(axis), x)
    return bind("argmax", x, axis=axis, index_dtype=dtypes.canonical(index_dtype))


def argmin(x: Any, axis: int, index_dtype: Any = "int32") -> Any:
    axis = _from_end(int(axis), x)
    return bind("argmin", x, axis=axis, index_dtype=dtypes.canonical(index_dtype))


def cumsum(x: Any, axis: int = 0, reverse: bool = False) -> Any:
    return bind("cumsum", x, axis=_from_end(int(axis), x), reverse=bool(reverse))


def dot_general(
    lhs: Any, rhs: Any, dimension_numbers: Any, preferred_element_type: Any = None
) -> Any:
    """JAX's dot_general: ((lhs_contract, rhs_contract), (lhs_batch, rhs_batch)).

    The result is batch dims, then lhs free dims, then rhs free dims.
    """
    (lc, rc), (lb, rb) = dimension_numbers
    dn = ((tuple(lc), tuple(rc)), (tuple(lb), tuple(rb)))
    pet = None if preferred_element_type is None else dtypes.canonical(preferred_element_type)
    return bind("dot_general", lhs, rhs, dimension_numbers=dn, preferred_element_type=pet)


def slice(
    x: Any,
    start_indices: Sequence[int],
    limit_indices: Sequence[int],
    strides: Sequence[int] | None = None,
) -> Any:
    starts = as_ints("slice start_indices", start_indices)
    limits = as_ints("slice limit_indices", limit_indices)
    n = len(starts)
    strides = as_ints("slice strides", strides) if strides is not None else (1,) * n
    return bind("slice", x, start_indices=starts, limit_indices=limits, strides=strides)


def slice_in_dim(x: Any, start: int, limit: int, stride: int = 1, axis: int = 0) -> Any:
    t = type_of(x)
    starts = [0] * t.ndim
    limits = list(t.shape)
    strides = [1] * t.ndim
    starts[axis], limits[axis], strides[axis] = start, limit, stride
    return slice(x, starts, limits, strides)


def pad(x: Any, padding_value: Any, padding_config: Sequence[tuple[int, int, int]]) -> Any:
    """padding_config: (low, high, interior) per dim; low/high may be negative."""
    if isinstance(padding_value, (int, float, bool)):
        padding_value = constant(np.asarray(padding_value, dtype=x.dtype))
    config = tuple(as_ints("pad's padding_config entry", c) for c in padding_config)
    t = type_of(x)
    if len(config) != t.ndim or any(len(c) != 3 for c in config):
        raise ShapeError(
            f"pad's padding_config {config} needs one (low, high, interior) "
            f"per dim of the operand of shape {t.shape}",
            hint="e.g. [(1, 1, 0)] * x.ndim",
        )
    # (n - 1 if n else 0): this module's `max` is the elementwise op
    sizes = [
        lo + hi + n + (n - 1 if n else 0) * inner for (lo, hi, inner), n in zip(config, t.shape)
    ]
    if any(inner < 0 for _, _, inner in config):
        raise ShapeError(f"pad's interior padding must be >= 0, got {config}")
    check_shape("pad's result", sizes)
    return bind("pad", x, padding_value, padding_config=config)


def concatenate(operands: Sequence[Any], dimension: int) -> Any:
    if len(operands) == 1:
        return operands[0]
    return bind("concatenate", *operands, dimension=int(dimension))


def rev(x: Any, dimensions: Sequence[int]) -> Any:
    return bind("rev", x, dimensions=tuple(dimensions))


def squeeze(x: Any, dimensions: Sequence[int]) -> Any:
    t = type_of(x)
    dims = {d % t.ndim for d in dimensions}
    return reshape(x, tuple(s for i, s in enumerate(t.shape) if i not in dims))


def expand_dims(x: Any, dimensions: Sequence[int]) -> Any:
    t = type_of(x)
    shape = list(t.shape)
    dimensions = as_ints("expand_dims dimensions", dimensions)
    for d in sorted(_axis(d, t.ndim + len(dimensions), "expand_dims") for d in dimensions):
        shape.insert(d, 1)
    return reshape(x, shape)


def stop_gradient(x: Any) -> Any:
    return bind("stop_gradient", x)


def dynamic_slice(x: Any, start_indices: Sequence[Any], slice_sizes: Sequence[int]) -> Any:
    """x[start:start+size] per dim with traced starts (clamped into range, as JAX does)."""
    starts = [_index_scalar(s) for s in start_indices]
    sizes = check_shape("dynamic_slice's slice_sizes", slice_sizes)
    return bind("dynamic_slice", x, *starts, slice_sizes=sizes)


def dynamic_update_slice(x: Any, update: Any, start_indices: Sequence[Any]) -> Any:
    starts = [_index_scalar(s) for s in start_indices]
    return bind("dynamic_update_slice", x, update, *starts)


def dynamic_index_in_dim(x: Any, index: Any, axis: int = 0, keepdims: bool = True) -> Any:
    t = type_of(x)
    starts = [0] * t.ndim
    starts[axis] = index
    sizes = list(t.shape)
    sizes[axis] = 1
    out = dynamic_slice(x, starts, sizes)
    return out if keepdims else squeeze(out, (axis,))


def dynamic_update_index_in_dim(x: Any, update: Any, index: Any, axis: int = 0) -> Any:
    t = type_of(x)
    if type_of(update).ndim == t.ndim - 1:
        update = expand_dims(update, (axis,))
    starts = [0] * t.ndim
    starts[axis] = index
    return dynamic_update_slice(x, update, starts)


def dynamic_slice_in_dim(x: Any, start_index: Any, slice_size: int, axis: int = 0) -> Any:
    """x[start:start+slice_size] along `axis` with a traced start (clamped, as JAX does)."""
    t = type_of(x)
    axis = _axis(axis, t.ndim, "dynamic_slice_in_dim")
    starts: list[Any] = [0] * t.ndim
    starts[axis] = start_index
    sizes = list(t.shape)
    sizes[axis] = slice_size
    return dynamic_slice(x, starts, sizes)


def dynamic_update_slice_in_dim(x: Any, update: Any, start_index: Any, axis: int) -> Any:
    """x with `update` written at start_index along `axis` (clamped, as JAX does)."""
    t = type_of(x)
    axis = _axis(axis, t.ndim, "dynamic_update_slice_in_dim")
    starts: list[Any] = [0] * t.ndim
    starts[axis] = start_index
    return dynamic_update_slice(x, update, starts)


def _axis(axis: int, ndim: int, what: str) -> int:
    # (this module's `max` is the elementwise op, hence no builtins here)
    if (
        isinstance(axis, bool)
        or not isinstance(axis, (int, np.integer))
        or not -ndim <= axis < ndim
    ):
        raise ShapeError(
            f"{what}: axis {axis!r} is out of range for rank {ndim}",
            hint=f"use an axis from {-ndim} to {ndim - 1}",
        )
    return int(axis) % ndim


def _index_scalar(s: Any) -> Any:
    if isinstance(s, (int, np.integer)):
        return constant(np.asarray(s, dtype=np.int32))
    t = type_of(s)
    if t.dtype != "int32":
        return convert_element_type(s, "int32")
    return s


def gather(x: Any, indices: Any, axis: int = 0) -> Any:
    """Take along one axis: out = x[..., indices, ...] (indices clamped, as JAX does)."""
    return bind("gather", x, indices, axis=int(axis))


def scatter_add(x: Any, indices: Any, updates: Any, axis: int = 0) -> Any:
    """x with updates added at `indices` along `axis` (duplicates accumulate)."""
    return bind("scatter_add", x, indices, updates, axis=int(axis))
