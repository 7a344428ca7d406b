"""Indexing of spmd.numpy: x[idx] (numpy's basic and advanced rules), x.at[idx].set/add/...,
take, take_along_axis, diagonal.

Basic indices become slice/rev/reshape; advanced (integer array) indices are linearised
into one `gather`. Out-of-range array indices are clamped, as JAX does.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spmd import dtypes, lax
from spmd.errors import ShapeError, TracerError
from spmd.numpy.core import asarray, broadcast_shapes, broadcast_to_shape, normalize_axis
from spmd.tracing import Tracer, describe_loc, type_of


def _index_error(problem: str, hint: str | None = None) -> ShapeError:
    return ShapeError(problem, describe_loc(), hint)


def _is_array_index(item: Any) -> bool:
    from spmd.array import Array

    return isinstance(item, (np.ndarray, list, Tracer, Array))


def _expand_masks(items: tuple[Any, ...]) -> list[Any]:
    """Concrete bool masks become their nonzero() index arrays; traced ones are refused."""
    out: list[Any] = []
    for item in items:
        if isinstance(item, bool) or (isinstance(item, Tracer) and item.type.dtype == "bool"):
            raise TracerError(
                "boolean mask indexing gives a data-dependent shape, which jit cannot trace",
                describe_loc(),
                "use spmd.numpy.where(mask, x, 0) to keep the shape",
            )
        if _is_array_index(item) and not isinstance(item, Tracer):
            item = np.asarray(item)
            if item.dtype == np.bool_:
                out.extend(np.nonzero(item))
                continue
            if not np.issubdtype(item.dtype, np.integer):
                raise _index_error(f"array indices must be integers, got {item.dtype}")
        elif isinstance(item, Tracer) and not dtypes.is_int(item.type.dtype):
            raise _index_error(f"array indices must be integers, got {item.type.dtype}")
        out.append(item)
    return out


def _dims_used(item: Any) -> int:
    return 0 if item is None or item is Ellipsis else 1


def _normalize(x: Any, idx: Any) -> tuple[Any, list[Any]]:
    """x with None dims inserted, and one index item per dim of it."""
    items = _expand_masks(idx if isinstance(idx, tuple) else (idx,))
    ndim = type_of(x).ndim
    used = sum(_dims_used(i) for i in items)
    ellipses = [k for k, item in enumerate(items) if item is Ellipsis]
    if len(ellipses) > 1:
        raise _index_error("an index can have only one Ellipsis (...)")
    if used > ndim:
        raise _index_error(f"too many indices ({used}) for an array of rank {ndim}")
    fill = [slice(None)] * (ndim - used)
    if ellipses:
        k = ellipses[0]
        items = items[:k] + fill + items[k + 1 :]
    else:
        items = items + fill
    if any(i is None for i in items):
        shape = list(type_of(x).shape)
        for pos, item in enumerate(items):
            if item is None:
                shape.insert(pos, 1)
        x = lax.reshape(x, shape)
        items = [slice(None) if i is None else i for i in items]
    return x, items


def _static_int(item: Any, n: int) -> int:
    from spmd.validate import as_int

    i = as_int("index", item)
    if not -n <= i < n:
        raise _index_error(
            f"index {i} is out of bounds for a dim of size {n}", hint=f"use an index in [{-n}, {n})"
        )
    return i % n


def _basic(x: Any, items: list[Any]) -> Any:
    """Slices (any step) and ints: one slice, one rev, one reshape."""
    shape = type_of(x).shape
    starts, limits, strides, flips, out_shape = [], [], [], [], []
    for d, (item, n) in enumerate(zip(items, shape)):
        if not isinstance(item, slice):
            i = _static_int(item, n)
            starts.append(i)
            limits.append(i + 1)
            strides.append(1)
            continue
        start, stop, step = item.indices(n)
        m = len(range(start, stop, step))
        if step < 0 and m:
            start, step = start + (m - 1) * step, -step
            flips.append(d)
        starts.append(start if m else 0)
        limits.append(start + (m - 1) * step + 1 if m else 0)
        strides.append(step)
        out_shape.append(m)
    if (starts, limits, strides) != ([0] * len(shape), list(shape), [1] * len(shape)):
        x = lax.slice(x, starts, limits, strides)
    if flips:
        x = lax.rev(x, flips)
    return lax.reshape(x, out_shape)


def _static_indices(item: Any) -> np.ndarray:
    """Concrete indices as int64 (refusing floats, None and ints beyond int64)."""
    try:
        arr = np.asarray(item)
    except (OverflowError, ValueError):
        arr = None
    if arr is None or arr.dtype.kind not in "iu" or arr.dtype == np.uint64:
        raise _index_error(
            f"indices must be integers, got {item!r}",
            hint="index with ints, slices, or integer arrays",
        )
    return arr.astype(np.int64)


def _index_value(item: Any, n: int) -> Any:
    """An int32 index array with negatives wrapped and clamped into [0, n)."""
    if not isinstance(item, Tracer) and not hasattr(item, "aval"):
        arr = _static_indices(item)
        arr = np.where(arr < 0, arr + n, arr)
        return asarray(np.clip(arr, 0, max(n - 1, 0)).astype(np.int32))
    value = lax.convert_element_type(asarray(item), "int32")
    zero = lax.full_like(value, 0)
    value = lax.select(lax.lt(value, zero), lax.add(value, lax.full_like(value, n)), value)
    value = lax.max(value, zero)
    return lax.min(value, lax.full_like(value, max(n - 1, 0)))


def _advanced(x: Any, items: list[Any]) -> Any:
    """numpy's advanced indexing via one gather on the merged indexed dims."""
    adv = [d for d, item in enumerate(items) if not isinstance(item, slice)]
    sliced = _basic(x, [slice(None) if d in adv else item for d, item in enumerate(items)])
    shape = type_of(sliced).shape
    values = [_index_value(items[d], shape[d]) for d in adv]
    batch = broadcast_shapes("indexing", *(type_of(v).shape for v in values))
    values = [broadcast_to_shape(v, batch) for v in values]
    rest = [d for d in range(len(shape)) if d not in adv]
    merged = lax.transpose(sliced, adv + rest)
    merged = lax.reshape(
        merged, (math.prod(shape[d] for d in adv),) + tuple(shape[d] for d in rest)
    )
    linear = values[-1]
    stride = shape[adv[-1]]
    for d, v in zip(reversed(adv[:-1]), reversed(values[:-1])):
        linear = lax.add(linear, lax.mul(v, lax.full(batch, stride, "int32")))
        stride *= shape[d]
    out = lax.gather(merged, linear, 0)
    if adv != list(range(adv[0], adv[0] + len(adv))):
        return out  # separated advanced indices: their dims go first, as in numpy
    nb, first = len(batch), adv[0]
    perm = list(range(nb, nb + first)) + list(range(nb)) + list(range(nb + first, nb + len(rest)))
    return lax.transpose(out, perm)


def getitem(x: Any, idx: Any) -> Any:
    """x[idx] with numpy's rules: ints, slices (negative steps too), None, ..., int arrays."""
    x = asarray(x)
    x, items = _normalize(x, idx)
    if any(_is_array_index(i) for i in items):
        return _advanced(x, items)
    return _basic(x, items)


class _IndexedUpdate:
    """x.at[idx]: functional updates at the positions x[idx] selects."""

    def __init__(self, x: Any, idx: Any):
        self.x = asarray(x)
        self.idx = idx

    def get(self) -> Any:
        return getitem(self.x, self.idx)

    def _positions(self) -> tuple[Any, Any]:
        """Flat positions x[idx] reads, and a flat bool mask of the positions hit."""
        t = type_of(self.x)
        flat = lax.iota("int32", (t.size,), 0)
        positions = getitem(lax.reshape(flat, t.shape), self.idx)
        positions = lax.reshape(positions, (type_of(positions).size,))
        ones = lax.full(type_of(positions).shape, 1, "int32")
        hits = lax.scatter_add(lax.full((t.size,), 0, "int32"), positions, ones, 0)
        return positions, lax.gt(hits, lax.full((t.size,), 0, "int32"))

    def _scattered(self, values: Any, positions: Any) -> Any:
        t = type_of(self.x)
        target = type_of(
            getitem(lax.reshape(lax.iota("int32", (t.size,), 0), t.shape), self.idx)
        ).shape
        values = lax.convert_element_type(asarray(values), t.dtype, t.weak)
        values = lax.reshape(broadcast_to_shape(values, target), (math.prod(target),))
        return lax.scatter_add(lax.full((t.size,), 0, t.dtype), positions, values, 0)

    def _combine(self, values: Any, how: Any) -> Any:
        t = type_of(self.x)
        positions, hit = self._positions()
        scattered = self._scattered(values, positions)
        flat = lax.reshape(self.x, (t.size,))
        return lax.reshape(lax.select(hit, how(flat, scattered), flat), t.shape)

    def set(self, values: Any) -> Any:
        """x with x[idx] = values (with repeated indices, which one wins is unspecified)."""
        return self._combine(values, lambda old, new: new)

    def add(self, values: Any) -> Any:
        """x with values added at x[idx]; repeated indices accumulate."""
        t = type_of(self.x)
        positions, _ = self._positions()
        flat = lax.reshape(self.x, (t.size,))
        scattered = self._scattered(values, positions)
        return lax.reshape(lax.add(flat, scattered), t.shape)

    def subtract(self, values: Any) -> Any:
        from spmd.numpy.ufuncs import negative

        return self.add(negative(asarray(values)))

    def multiply(self, values: Any) -> Any:
        """x with x[idx] *= values (indices assumed unique)."""
        return self._combine(values, lax.mul)

    mul = multiply

    def divide(self, values: Any) -> Any:
        return self._combine(values, lax.div)

    def min(self, values: Any) -> Any:
        return self._combine(values, lax.min)

    def max(self, values: Any) -> Any:
        return self._combine(values, lax.max)


class AtIndexer:
    """The object behind `x.at`: `x.at[idx].set(v)`, `.add(v)`, `.get()`..."""

    def __init__(self, x: Any):
        self.x = x

    def __getitem__(self, idx: Any) -> _IndexedUpdate:
        return _IndexedUpdate(self.x, idx)


def take(
    a: Any, indices: Any, axis: int | None = None, mode: str | None = None, fill_value: Any = None
) -> Any:
    """jax.numpy.take: negatives wrap; out-of-range indices give fill_value (NaN for floats,
    the most negative int, the largest unsigned, True) under mode "fill", the default as in
    JAX, or the nearest element under mode "clip"."""
    if mode not in (None, "fill", "clip"):
        raise _index_error(f"take mode={mode!r} is not supported", hint="use 'fill' or 'clip'")
    x = asarray(a)
    if axis is None:
        x = lax.reshape(x, (type_of(x).size,))
        axis = 0
    axis = normalize_axis(axis, type_of(x).ndim)
    n = type_of(x).shape[axis]
    index = _index_value(indices, n)
    out = lax.gather(x, index, axis)
    if mode == "clip":
        return out
    inside = _in_range(indices, n)
    if inside is True:
        return out
    t = type_of(out)
    k = type_of(index).ndim
    mask = lax.broadcast_in_dim(inside, t.shape, tuple(range(axis, axis + k)))
    return lax.select(mask, out, lax.full(t.shape, _fill(t.dtype, fill_value), t.dtype))


def _in_range(indices: Any, n: int) -> Any:
    """True when every concrete index is within [-n, n); else a bool mask per index."""
    if not isinstance(indices, Tracer) and not hasattr(indices, "aval"):
        raw = _static_indices(indices)
        inside = (raw >= -n) & (raw < n)
        return True if inside.all() else asarray(inside)
    raw = lax.convert_element_type(asarray(indices), "int64")
    low = lax.ge(raw, lax.full_like(raw, -n))
    return lax.bitwise_and(low, lax.lt(raw, lax.full_like(raw, n)))


def _fill(dtype: str, fill_value: Any) -> Any:
    if fill_value is not None:
        return fill_value
    if dtypes.is_float(dtype):
        return float("nan")
    if dtype == "bool":
        return True
    info = np.iinfo(dtypes.to_numpy(dtype))
    return info.max if dtypes.is_unsigned(dtype) else info.min


def take_along_axis(arr: Any, indices: Any, axis: int | None) -> Any:
    """numpy.take_along_axis: indices of arr's rank, broadcast on the other dims."""
    x = asarray(arr)
    if axis is None:
        x = lax.reshape(x, (type_of(x).size,))
        indices = lax.reshape(asarray(indices), (type_of(asarray(indices)).size,))
        axis = 0
    shape = type_of(x).shape
    axis = normalize_axis(axis, len(shape))
    if type_of(asarray(indices)).ndim != len(shape):
        raise _index_error(
            f"take_along_axis needs indices of rank {len(shape)}, got shape "
            f"{type_of(asarray(indices)).shape}"
        )
    few = type_of(asarray(indices)).shape[axis]
    if 1 <= few <= FEW_ALONG and type_of(x).dtype != "bool":
        idx = asarray(indices)
        parts = [
            _take_one_along(x, lax.slice_in_dim(idx, i, i + 1, axis=axis), axis) for i in range(few)
        ]
        return parts[0] if few == 1 else lax.concatenate(parts, axis)
    items: list[Any] = []
    for d, n in enumerate(shape):
        if d == axis:
            items.append(indices)
            continue
        view = [1] * len(shape)
        view[d] = n
        items.append(np.arange(n, dtype=np.int32).reshape(view))
    return getitem(x, tuple(items))


FEW_ALONG = 8  # up to this many indices per row: compare-select-sum per index (no gather)


def _take_one_along(x: Any, indices: Any, axis: int) -> Any:
    """One element per row along axis (log-probs of target tokens): compare with an iota,
    select, sum over axis. Elementwise plus one reduction, so a batch-sharded x stays
    sharded (no gather of the flattened array, no scatter-add in the gradient)."""
    shape = type_of(x).shape
    kept = tuple(1 if d == axis else n for d, n in enumerate(shape))
    out_shape = broadcast_shapes("take_along_axis", kept, type_of(indices).shape)
    full = tuple(shape[axis] if d == axis else n for d, n in enumerate(out_shape))
    where = broadcast_to_shape(_index_value(indices, shape[axis]), full)
    hit = lax.eq(lax.iota("int32", full, axis), where)
    values = broadcast_to_shape(x, full)
    picked = lax.select(hit, values, lax.full_like(values, 0))
    return lax.reshape(lax.reduce_sum(picked, (axis,)), out_shape)


def diagonal(a: Any, offset: int = 0, axis1: int = 0, axis2: int = 1) -> Any:
    """numpy.diagonal: the other dims first, the diagonal last."""
    x = asarray(a)
    ndim = type_of(x).ndim
    i, j = normalize_axis(axis1, ndim), normalize_axis(axis2, ndim)
    rest = [d for d in range(ndim) if d not in (i, j)]
    x = lax.transpose(x, rest + [i, j])
    rows, cols = type_of(x).shape[-2:]
    n = max(min(rows - max(-offset, 0), cols - max(offset, 0)), 0)
    r = np.arange(n, dtype=np.int32) + max(-offset, 0)
    c = np.arange(n, dtype=np.int32) + max(offset, 0)
    return getitem(x, (Ellipsis, r, c))
