"""Ops that cut, grow or flip a dim: slice, pad, concatenate, rev.

Dims a rule cannot map to one factor (a sliced, padded, concatenated or reversed dim)
are `blocked`; the partitioner's hand-written rules handle them with halos.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.errors import ShapeError
from spmd.ir.types import TensorType
from spmd.ops.common import letters, same_dtypes
from spmd.ops.opdef import AttrKind, Factors, Linearity, OpDef, Trait


def _slice_type(
    x: TensorType,
    *,
    start_indices: tuple[int, ...],
    limit_indices: tuple[int, ...],
    strides: tuple[int, ...],
) -> TensorType:
    n = x.ndim
    if not len(start_indices) == len(limit_indices) == len(strides) == n:
        raise ShapeError(f"slice of a rank-{n} array needs {n} starts, limits and strides")
    for s, lim, st, size in zip(start_indices, limit_indices, strides, x.shape):
        if not (0 <= s <= lim <= size and st >= 1):
            raise ShapeError(f"slice [{s}:{lim}:{st}] is out of bounds for a dim of size {size}")
    shape = tuple(-(-(lim - s) // st) for s, lim, st in zip(start_indices, limit_indices, strides))
    return TensorType(shape, x.dtype, x.weak)


def _slice_ref(x: np.ndarray, *, start_indices: Any, limit_indices: Any, strides: Any) -> Any:
    return x[tuple(slice(s, lim, st) for s, lim, st in zip(start_indices, limit_indices, strides))]


def _slice_factors(
    x: TensorType, *, start_indices: Any, limit_indices: Any, strides: Any
) -> Factors:
    dims = letters(x.ndim)
    cut = [
        dims[i]
        for i in range(x.ndim)
        if (start_indices[i], limit_indices[i], strides[i]) != (0, x.shape[i], 1)
    ]
    return Factors.parse(f"{dims}->{dims}", blocked="".join(cut))


def _slice_vjp(
    ct: Any, x: Any, *, out: Any, start_indices: Any, limit_indices: Any, strides: Any
) -> Any:
    config = []
    for s, st, size, n in zip(start_indices, strides, x.type.shape, ct.type.shape):
        used = s + (n - 1) * st + 1 if n else s
        config.append((s, size - used, st - 1) if n else (0, size, 0))
    if any(n == 0 for n in ct.type.shape):
        return prim.zeros_like(x)
    return prim.pad(ct, 0, config)


def _pad_type(x: TensorType, v: TensorType, *, padding_config: Any) -> TensorType:
    same_dtypes("pad", x, v)
    if v.ndim != 0 or len(padding_config) != x.ndim:
        raise ShapeError(f"pad needs a scalar padding value and {x.ndim} (low, high, interior)")
    shape = []
    for (lo, hi, interior), n in zip(padding_config, x.shape):
        size = lo + hi + n + max(n - 1, 0) * interior
        if interior < 0 or size < 0:
            raise ShapeError(f"pad config {(lo, hi, interior)} is invalid for a dim of size {n}")
        shape.append(size)
    return TensorType(tuple(shape), x.dtype, x.weak)


def _pad_ref(x: np.ndarray, v: np.ndarray, *, padding_config: Any) -> np.ndarray:
    shape = _pad_type(
        TensorType(x.shape, dtypes.canonical(x.dtype)),
        TensorType((), dtypes.canonical(v.dtype)),
        padding_config=padding_config,
    ).shape
    # Place x (with interior gaps) into a buffer padded by max(lo, 0), then crop negatives.
    big = [
        max(lo, 0) + max(hi, 0) + n + max(n - 1, 0) * it
        for (lo, hi, it), n in zip(padding_config, x.shape)
    ]
    out = np.full(big, v, dtype=x.dtype)
    out[
        tuple(
            slice(max(lo, 0), max(lo, 0) + (n - 1) * (it + 1) + 1 if n else max(lo, 0), it + 1)
            for (lo, hi, it), n in zip(padding_config, x.shape)
        )
    ] = x
    crop = tuple(
        slice(max(-lo, 0), max(-lo, 0) + s) for (lo, _, _), s in zip(padding_config, shape)
    )
    return out[crop]


def _pad_factors(x: TensorType, v: TensorType, *, padding_config: Any) -> Factors:
    dims = letters(x.ndim)
    cut = [dims[i] for i, c in enumerate(padding_config) if tuple(c) != (0, 0, 0)]
    return Factors.parse(f"{dims},->{dims}", blocked="".join(cut))


def _pad_vjp(ct: Any, x: Any, v: Any, *, out: Any, padding_config: Any) -> tuple[Any, Any]:
    unneg = [(max(-lo, 0), max(-hi, 0), 0) for lo, hi, _ in padding_config]
    full = prim.pad(ct, 0, unneg) if any(a or b for a, b, _ in unneg) else ct
    starts, limits, strides = [], [], []
    for (lo, _, it), n in zip(padding_config, x.type.shape):
        start = max(lo, 0)
        starts.append(start)
        limits.append(start + (n - 1) * (it + 1) + 1 if n else start)
        strides.append(it + 1)
    ct_x = prim.slice(full, starts, limits, strides)
    all_axes = tuple(range(x.type.ndim))
    ct_v = prim.sub(prim.reduce_sum(ct, all_axes), prim.reduce_sum(ct_x, all_axes))
    return ct_x, ct_v


def _concat_type(*xs: TensorType, dimension: int) -> TensorType:
    same_dtypes("concatenate", *xs)
    first = xs[0]
    if not 0 <= dimension < first.ndim:
        raise ShapeError(f"concatenate dimension {dimension} out of range for rank {first.ndim}")
    for t in xs:
        rest = [s for i, s in enumerate(t.shape) if i != dimension]
        if t.ndim != first.ndim or rest != [s for i, s in enumerate(first.shape) if i != dimension]:
            raise ShapeError(
                "concatenate needs equal shapes except along the axis, got "
                + ", ".join(str(x.shape) for x in xs)
            )
    shape = list(first.shape)
    shape[dimension] = sum(t.shape[dimension] for t in xs)
    return TensorType(tuple(shape), first.dtype, all(t.weak for t in xs))


def _concat_factors(*xs: TensorType, dimension: int) -> Factors:
    dims = letters(xs[0].ndim)
    return Factors.parse(",".join([dims] * len(xs)) + "->" + dims, blocked=dims[dimension])


def _concat_vjp(ct: Any, *xs: Any, out: Any, dimension: int) -> tuple[Any, ...]:
    cts, offset = [], 0
    for x in xs:
        n = x.type.shape[dimension]
        cts.append(prim.slice_in_dim(ct, offset, offset + n, 1, dimension))
        offset += n
    return tuple(cts)


def _rev_type(x: TensorType, *, dimensions: tuple[int, ...]) -> TensorType:
    if any(not 0 <= d < x.ndim for d in dimensions):
        raise ShapeError(f"rev dimensions {dimensions} out of range for rank {x.ndim}")
    return x


def _rev_factors(x: TensorType, *, dimensions: tuple[int, ...]) -> Factors:
    dims = letters(x.ndim)
    return Factors.parse(f"{dims}->{dims}", blocked="".join(dims[d] for d in dimensions))


OPS = [
    OpDef(
        "slice",
        _slice_type,
        _slice_ref,
        _slice_vjp,
        _slice_factors,
        linear=Linearity.JOINT,
        traits=Trait.VIEW,
        attr_kinds={
            "start_indices": AttrKind.STARTS,
            "limit_indices": AttrKind.WINDOW,
            "strides": AttrKind.STRIDES,
        },
        shared_operands=(),
    ),
    # Not linear in x: pad(x1 + x2, v) = pad(x1, v) + pad(x2, v) - v where padded. (A pad that
    # grows never keeps a pending sum anyway: the partitioner resolves before growing.)
    OpDef(
        "pad",
        _pad_type,
        _pad_ref,
        _pad_vjp,
        _pad_factors,
        traits=Trait.VIEW,
        attr_kinds={"padding_config": AttrKind.PADDING},
        shared_operands=(1,),
    ),
    OpDef(
        "concatenate",
        _concat_type,
        lambda *xs, dimension: np.concatenate(xs, dimension),
        _concat_vjp,
        _concat_factors,
        linear=Linearity.JOINT,
        traits=Trait.VIEW,
        attr_kinds={"dimension": AttrKind.DIM},
        shared_operands=(),
    ),
    OpDef(
        "rev",
        _rev_type,
        lambda x, *, dimensions: np.flip(x, dimensions) if dimensions else x,
        lambda ct, x, *, out, dimensions: prim.rev(ct, dimensions),
        _rev_factors,
        linear=Linearity.JOINT,
        traits=Trait.VIEW,
        attr_kinds={"dimensions": AttrKind.DIMS},
        shared_operands=(),
    ),
]
