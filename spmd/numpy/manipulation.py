"""Shape manipulation of spmd.numpy: reshape, transpose, concatenate, split, flip, roll, tril...

Everything is static-shaped; `roll` is a slice + concatenate so the partitioner sees a shift.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import lax
from spmd.errors import ShapeError
from spmd.numpy.core import (
    asarray,
    broadcast_shapes,
    broadcast_to_shape,
    broadcast_values,
    normalize_axis,
    promote_dtypes,
)
from spmd.tracing import type_of
from spmd.validate import as_int, as_ints, check_shape, check_size


def _shape(x: Any) -> tuple[int, ...]:
    return type_of(x).shape


def reshape(a: Any, newshape: Any, order: str = "C") -> Any:
    """numpy.reshape; one dim may be -1."""
    if order != "C":
        raise ShapeError(f"reshape order={order!r} is not supported", hint="use order='C'")
    x = asarray(a)
    shape = as_ints("reshape's new shape", newshape)
    if any(s < -1 for s in shape):
        raise ShapeError(
            f"reshape: new shape {shape} has a negative dim",
            hint="use sizes >= 0 and at most one -1",
        )
    size = type_of(x).size
    if shape.count(-1) > 1:
        raise ShapeError(f"reshape: only one dim may be -1, got {shape}")
    if -1 in shape:
        known = math.prod(s for s in shape if s != -1)
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape {_shape(x)} ({size} elements) to {shape}")
        shape = tuple(size // known if s == -1 else s for s in shape)
    return lax.reshape(x, shape)


def ravel(a: Any) -> Any:
    return reshape(a, (-1,))


def transpose(a: Any, axes: Sequence[int] | None = None) -> Any:
    x = asarray(a)
    ndim = type_of(x).ndim
    if axes is None:
        return lax.transpose(x, tuple(reversed(range(ndim))))
    perm = tuple(normalize_axis(p, ndim) for p in as_ints("transpose axes", axes))
    if sorted(perm) != list(range(ndim)):
        raise ShapeError(f"transpose axes {tuple(axes)} are not a permutation of {ndim} dims")
    return lax.transpose(x, perm)


def swapaxes(a: Any, axis1: int, axis2: int) -> Any:
    x = asarray(a)
    ndim = type_of(x).ndim
    perm = list(range(ndim))
    i, j = normalize_axis(axis1, ndim), normalize_axis(axis2, ndim)
    perm[i], perm[j] = perm[j], perm[i]
    return lax.transpose(x, perm)


def moveaxis(a: Any, source: Any, destination: Any) -> Any:
    x = asarray(a)
    ndim = type_of(x).ndim
    src = list(as_ints("moveaxis source", source))
    dst = list(as_ints("moveaxis destination", destination))
    src = [normalize_axis(s, ndim) for s in src]
    dst = [normalize_axis(d, ndim) for d in dst]
    if len(src) != len(dst):
        raise ShapeError("moveaxis needs as many sources as destinations")
    rest = [i for i in range(ndim) if i not in src]
    for d, s in sorted(zip(dst, src)):
        rest.insert(d, s)
    return lax.transpose(x, rest)


def expand_dims(a: Any, axis: Any) -> Any:
    x = asarray(a)
    axes = as_ints("expand_dims axis", axis)
    out_ndim = type_of(x).ndim + len(axes)
    axes = tuple(normalize_axis(d, out_ndim) for d in axes)
    return lax.expand_dims(x, axes)


def squeeze(a: Any, axis: Any = None) -> Any:
    x = asarray(a)
    shape = _shape(x)
    if axis is None:
        axes = tuple(i for i, s in enumerate(shape) if s == 1)
    else:
        axes = tuple(normalize_axis(d, len(shape)) for d in as_ints("squeeze axis", axis))
    for d in axes:
        if shape[d] != 1:
            raise ShapeError(
                f"cannot squeeze axis {d} of size {shape[d]} (shape {shape})",
                hint="only size-1 axes can be squeezed",
            )
    return lax.reshape(x, tuple(s for i, s in enumerate(shape) if i not in axes))


def broadcast_to(a: Any, shape: Sequence[int]) -> Any:
    x = asarray(a)
    shape = check_shape("broadcast_to", shape)
    if broadcast_shapes("broadcast_to", _shape(x), shape) != shape:
        raise ShapeError(f"cannot broadcast shape {_shape(x)} to {shape}")
    return broadcast_to_shape(x, shape)


def broadcast_arrays(*args: Any) -> list[Any]:
    return broadcast_values("broadcast_arrays", *(asarray(a) for a in args))


def atleast_1d(a: Any) -> Any:
    x = asarray(a)
    return lax.reshape(x, (1,)) if type_of(x).ndim == 0 else x


def concatenate(arrays: Sequence[Any], axis: int | None = 0) -> Any:
    """numpy.concatenate with JAX's promotion; axis=None flattens first."""
    values = promote_dtypes(*[asarray(a) for a in arrays])
    if axis is None:
        values = [ravel(v) for v in values]
        axis = 0
    ndim = type_of(values[0]).ndim
    if ndim == 0:
        raise ShapeError(
            "zero-dimensional arrays cannot be concatenated", hint="use stack, or atleast_1d first"
        )
    return lax.concatenate(values, normalize_axis(axis, ndim))


def stack(arrays: Sequence[Any], axis: int = 0) -> Any:
    values = promote_dtypes(*[asarray(a) for a in arrays])
    shapes = {_shape(v) for v in values}
    if len(shapes) != 1:
        raise ShapeError(f"stack needs arrays of one shape, got {sorted(shapes)}")
    ndim = type_of(values[0]).ndim + 1
    axis = normalize_axis(axis, ndim)
    return lax.concatenate([lax.expand_dims(v, (axis,)) for v in values], axis)


def vstack(arrays: Sequence[Any]) -> Any:
    values = [asarray(a) for a in arrays]
    values = [lax.reshape(v, (1, type_of(v).size)) if type_of(v).ndim < 2 else v for v in values]
    return concatenate(values, 0)


def hstack(arrays: Sequence[Any]) -> Any:
    values = [atleast_1d(a) for a in arrays]
    return concatenate(values, 0 if type_of(values[0]).ndim == 1 else 1)


def split(a: Any, indices_or_sections: Any, axis: int = 0) -> list[Any]:
    """numpy.split: a number of equal sections, or the indices to cut at."""
    x = asarray(a)
    axis = normalize_axis(axis, type_of(x).ndim)
    n = _shape(x)[axis]
    if isinstance(indices_or_sections, int):
        sections = indices_or_sections
        if sections <= 0 or n % sections:
            raise ShapeError(
                f"split: {n} elements on axis {axis} do not divide into {sections} equal sections",
                hint="pass the cut indices instead",
            )
        cuts = [n // sections * i for i in range(1, sections)]
    else:
        cuts = list(as_ints("split indices", indices_or_sections))
    bounds = [0, *cuts, n]
    out = []
    for lo, hi in itertools.pairwise(bounds):
        lo = min(max(lo if lo >= 0 else lo + n, 0), n)
        hi = min(max(hi if hi >= 0 else hi + n, lo), n)
        out.append(lax.slice_in_dim(x, lo, hi, 1, axis))
    return out


def flip(a: Any, axis: Any = None) -> Any:
    x = asarray(a)
    ndim = type_of(x).ndim
    if axis is None:
        axes: tuple[int, ...] = tuple(range(ndim))
    else:
        axes = as_ints("flip axis", axis)
    axes = tuple(normalize_axis(d, ndim) for d in axes)
    return lax.rev(x, axes) if axes else x


def _roll_one(x: Any, shift: int, axis: int) -> Any:
    n = _shape(x)[axis]
    if n == 0 or shift % n == 0:
        return x
    s = shift % n
    tail = lax.slice_in_dim(x, n - s, n, 1, axis)
    head = lax.slice_in_dim(x, 0, n - s, 1, axis)
    return lax.concatenate([tail, head], axis)


def roll(a: Any, shift: Any, axis: Any = None) -> Any:
    """numpy.roll with static shifts, as slice + concatenate (a shift to the partitioner)."""
    x = asarray(a)
    if axis is None:
        return lax.reshape(_roll_one(ravel(x), as_int("roll shift", shift), 0), _shape(x))
    shifts = as_ints("roll shift", shift)
    axes = as_ints("roll axis", axis)
    if len(shifts) == 1:
        shifts = shifts * len(axes)
    if len(shifts) != len(axes):
        raise ShapeError(f"roll: {len(shifts)} shifts for {len(axes)} axes")
    for s, ax in zip(shifts, axes):
        x = _roll_one(x, int(s), normalize_axis(ax, type_of(x).ndim))
    return x


def _triangle(a: Any, k: int, lower: bool) -> Any:
    x = asarray(a)
    shape = _shape(x)
    if len(shape) < 2:
        raise ShapeError(f"tril/triu need at least 2 dims, got shape {shape}")
    rows = lax.iota("int32", shape, len(shape) - 2)
    cols = lax.iota("int32", shape, len(shape) - 1)
    diff = lax.sub(cols, rows)  # j - i
    keep = (
        lax.le(diff, lax.full(shape, k, "int32"))
        if lower
        else lax.ge(diff, lax.full(shape, k, "int32"))
    )
    zero = lax.full(shape, 0, type_of(x).dtype)
    return lax.select(keep, x, zero)


def tril(m: Any, k: int = 0) -> Any:
    """Lower triangle (j - i <= k), as iota + select."""
    return _triangle(m, k, True)


def triu(m: Any, k: int = 0) -> Any:
    return _triangle(m, k, False)


def repeat(a: Any, repeats: int, axis: int | None = None) -> Any:
    """numpy.repeat with one static repeat count."""
    x = asarray(a)
    if not isinstance(repeats, (int, np.integer)) or isinstance(repeats, bool):
        raise ShapeError("repeat supports one int repeat count", hint="pass an int")
    repeats = check_size("repeat count", repeats)
    if axis is None:
        x = ravel(x)
        axis = 0
    shape = _shape(x)
    axis = normalize_axis(axis, len(shape))
    big = shape[: axis + 1] + (repeats,) + shape[axis + 1 :]
    dims = tuple(i if i <= axis else i + 1 for i in range(len(shape)))
    out = lax.broadcast_in_dim(x, big, dims)
    return lax.reshape(out, shape[:axis] + (shape[axis] * repeats,) + shape[axis + 1 :])


def tile(a: Any, reps: Any) -> Any:
    x = asarray(a)
    reps = check_shape("tile reps", reps)
    shape = _shape(x)
    ndim = max(len(shape), len(reps))
    shape = (1,) * (ndim - len(shape)) + shape
    reps = (1,) * (ndim - len(reps)) + reps
    x = lax.reshape(x, shape)
    big = tuple(v for r, s in zip(reps, shape) for v in (r, s))
    out = lax.broadcast_in_dim(x, big, tuple(range(1, 2 * ndim, 2)))
    return lax.reshape(out, tuple(r * s for r, s in zip(reps, shape)))
