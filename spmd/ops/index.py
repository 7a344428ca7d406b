"""Index ops: dynamic_slice, dynamic_update_slice, gather and scatter_add along one axis.

Sharding rule: operand dims that are not indexed keep their factor; an indexed dim is
blocked. Gather's index dims are factors of their own that pass to the result.
Out-of-range starts and indices are clamped into range, as JAX's defaults do.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.errors import DTypeError, ShapeError
from spmd.ir.types import TensorType
from spmd.ops.common import LETTERS, check_axis, letters, same_dtypes
from spmd.ops.opdef import AttrKind, Factors, Linearity, OpDef, Trait


def _check_starts(name: str, x: TensorType, starts: tuple[TensorType, ...]) -> None:
    if len(starts) != x.ndim:
        raise ShapeError(
            f"{name} of a rank-{x.ndim} array needs {x.ndim} start indices, got {len(starts)}"
        )
    for s in starts:
        if s.ndim != 0 or not dtypes.is_int(s.dtype):
            raise DTypeError(
                f"{name} start indices must be integer scalars, got {s}",
                hint="pass Python ints or 0-d int32 arrays",
            )


def _clamped_starts(shape: tuple[int, ...], sizes: tuple[int, ...], starts: Any) -> list[int]:
    return [int(np.clip(int(s), 0, n - k)) for s, n, k in zip(starts, shape, sizes)]


def _cut_factors(x: TensorType, sizes: tuple[int, ...]) -> tuple[str, str]:
    """Factor names of x's dims, and the blocked ones (dims not kept whole)."""
    dims = letters(x.ndim)
    cut = "".join(dims[i] for i in range(x.ndim) if sizes[i] != x.shape[i])
    return dims, cut


# dynamic_slice --------------------------------------------------------------------------


def _dynamic_slice_type(
    x: TensorType, *starts: TensorType, slice_sizes: tuple[int, ...]
) -> TensorType:
    _check_starts("dynamic_slice", x, starts)
    if len(slice_sizes) != x.ndim or any(not 0 <= k <= n for k, n in zip(slice_sizes, x.shape)):
        raise ShapeError(
            f"dynamic_slice sizes {slice_sizes} do not fit shape {x.shape}",
            hint="each slice size must be between 0 and the dim's size",
        )
    return TensorType(tuple(slice_sizes), x.dtype, x.weak)


def _dynamic_slice_ref(
    x: np.ndarray, *starts: np.ndarray, slice_sizes: tuple[int, ...]
) -> np.ndarray:
    begin = _clamped_starts(x.shape, slice_sizes, starts)
    return x[tuple(slice(b, b + k) for b, k in zip(begin, slice_sizes))].copy()


def _dynamic_slice_factors(
    x: TensorType, *starts: TensorType, slice_sizes: tuple[int, ...]
) -> Factors:
    """'ab,,->ab' with each cut dim blocked (starts are scalars)."""
    dims, cut = _cut_factors(x, slice_sizes)
    return Factors.parse(dims + "," * len(starts) + "->" + dims, blocked=cut)


def _dynamic_slice_vjp(
    ct: Any, x: Any, *starts: Any, out: Any, slice_sizes: tuple[int, ...]
) -> tuple[Any, ...]:
    zeros = prim.full(x.type.shape, 0, x.type.dtype)
    return (prim.dynamic_update_slice(zeros, ct, starts),) + (None,) * len(starts)


# dynamic_update_slice -------------------------------------------------------------------


def _dynamic_update_type(x: TensorType, update: TensorType, *starts: TensorType) -> TensorType:
    _check_starts("dynamic_update_slice", x, starts)
    same_dtypes("dynamic_update_slice", x, update)
    if update.ndim != x.ndim or any(k > n for k, n in zip(update.shape, x.shape)):
        raise ShapeError(
            f"dynamic_update_slice: update {update.shape} does not fit in operand {x.shape}",
            hint="the update needs x's rank and no larger dims",
        )
    return TensorType(x.shape, x.dtype, x.weak and update.weak)


def _dynamic_update_ref(x: np.ndarray, update: np.ndarray, *starts: np.ndarray) -> np.ndarray:
    begin = _clamped_starts(x.shape, update.shape, starts)
    out = x.copy()
    out[tuple(slice(b, b + k) for b, k in zip(begin, update.shape))] = update
    return out


def _dynamic_update_factors(x: TensorType, update: TensorType, *starts: TensorType) -> Factors:
    """'ab,ab,,->ab' where whole dims keep their factor; cut dims are blocked (update: none)."""
    dims, cut = _cut_factors(x, update.shape)
    upd = tuple(None if c in cut else c for c in dims)
    scalars: tuple[tuple[str | None, ...], ...] = tuple(() for _ in starts)
    return Factors((tuple(dims), upd) + scalars, (tuple(dims),), blocked=frozenset(cut))


def _dynamic_update_vjp(ct: Any, x: Any, update: Any, *starts: Any, out: Any) -> tuple[Any, ...]:
    hole = prim.full(update.type.shape, 0, out.type.dtype)
    ct_x = prim.dynamic_update_slice(ct, hole, starts)
    ct_update = prim.dynamic_slice(ct, starts, update.type.shape)
    return (ct_x, ct_update) + (None,) * len(starts)


# gather / scatter_add -------------------------------------------------------------------


def _gather_shape(x: TensorType, indices: TensorType, axis: int) -> tuple[int, ...]:
    return x.shape[:axis] + indices.shape + x.shape[axis + 1 :]


def _check_indices(name: str, x: TensorType, indices: TensorType, axis: int) -> int:
    axis = check_axis(name, axis, x.ndim)
    if x.ndim == 0:
        raise ShapeError(f"{name} needs an operand of rank >= 1, got a 0-d array")
    if not dtypes.is_int(indices.dtype):
        raise DTypeError(
            f"{name} indices must be integers, got {indices.dtype}",
            hint="convert with .astype('int32')",
        )
    return axis


def _gather_type(x: TensorType, indices: TensorType, *, axis: int) -> TensorType:
    axis = _check_indices("gather", x, indices, axis)
    return TensorType(_gather_shape(x, indices, axis), x.dtype, x.weak)


def _clip_indices(indices: np.ndarray, n: int) -> np.ndarray:
    return np.clip(indices.astype(np.int64), 0, max(n - 1, 0))


def _gather_ref(x: np.ndarray, indices: np.ndarray, *, axis: int) -> np.ndarray:
    axis %= x.ndim
    if x.shape[axis] == 0:
        shape = x.shape[:axis] + indices.shape + x.shape[axis + 1 :]
        return np.zeros(shape, x.dtype)
    return np.take(x, _clip_indices(indices, x.shape[axis]), axis=axis)


def _index_factors(x: TensorType, indices: TensorType, axis: int) -> tuple[str, str, str]:
    """Factor names of x's dims and the indices' dims; x's indexed dim is blocked."""
    dims = letters(x.ndim)
    idx = LETTERS[x.ndim : x.ndim + indices.ndim]
    return dims, idx, dims[axis]


def _gather_factors(x: TensorType, indices: TensorType, *, axis: int) -> Factors:
    """'abc,ij->aijc' for axis=1: the gathered dim b is blocked, i and j pass through."""
    axis %= x.ndim
    dims, idx, cut = _index_factors(x, indices, axis)
    return Factors.parse(f"{dims},{idx}->{dims[:axis]}{idx}{dims[axis + 1 :]}", blocked=cut)


def _gather_vjp(ct: Any, x: Any, indices: Any, *, out: Any, axis: int) -> tuple[Any, None]:
    zeros = prim.full(x.type.shape, 0, x.type.dtype)
    return prim.scatter_add(zeros, indices, ct, axis), None


def _scatter_type(
    x: TensorType, indices: TensorType, updates: TensorType, *, axis: int
) -> TensorType:
    axis = _check_indices("scatter_add", x, indices, axis)
    same_dtypes("scatter_add", x, updates)
    want = _gather_shape(x, indices, axis)
    if updates.shape != want:
        raise ShapeError(
            f"scatter_add: updates have shape {updates.shape}, but operand "
            f"{x.shape} with indices {indices.shape} on axis {axis} needs {want}",
            hint="broadcast the updates to x.shape[:axis] + indices.shape + x.shape[axis+1:]",
        )
    return TensorType(x.shape, x.dtype, x.weak and updates.weak)


def _scatter_ref(
    x: np.ndarray, indices: np.ndarray, updates: np.ndarray, *, axis: int
) -> np.ndarray:
    axis %= x.ndim
    out = np.moveaxis(x.copy(), axis, 0)
    if out.shape[0] == 0 or indices.size == 0:
        return x.copy()
    flat_idx = _clip_indices(indices, x.shape[axis]).ravel()
    moved = np.moveaxis(updates, list(range(axis, axis + indices.ndim)), list(range(indices.ndim)))
    moved = moved.reshape((flat_idx.size,) + out.shape[1:])
    with np.errstate(all="ignore"):
        if out.dtype == np.bool_:
            np.logical_or.at(out, flat_idx, moved)
        else:
            np.add.at(out, flat_idx, moved)
    return np.moveaxis(out, 0, axis)


def _scatter_factors(
    x: TensorType, indices: TensorType, updates: TensorType, *, axis: int
) -> Factors:
    """'abc,ij,aijc->abc' for axis=1: b, i and j are blocked (each device needs every update)."""
    axis %= x.ndim
    dims, idx, cut = _index_factors(x, indices, axis)
    upd = f"{dims[:axis]}{idx}{dims[axis + 1 :]}"
    return Factors.parse(f"{dims},{idx},{upd}->{dims}", blocked=cut + idx)


def _scatter_vjp(
    ct: Any, x: Any, indices: Any, updates: Any, *, out: Any, axis: int
) -> tuple[Any, None, Any]:
    return ct, None, prim.gather(ct, indices, axis)


OPS = [
    OpDef(
        "dynamic_slice",
        _dynamic_slice_type,
        _dynamic_slice_ref,
        _dynamic_slice_vjp,
        _dynamic_slice_factors,
        linear=Linearity.FIRST,
        traits=Trait.VIEW,
        attr_kinds={"slice_sizes": AttrKind.WINDOW},
    ),
    OpDef(
        "dynamic_update_slice",
        _dynamic_update_type,
        _dynamic_update_ref,
        _dynamic_update_vjp,
        _dynamic_update_factors,
        traits=Trait.VIEW,
    ),
    OpDef(
        "gather",
        _gather_type,
        _gather_ref,
        _gather_vjp,
        _gather_factors,
        linear=Linearity.FIRST,
        traits=Trait.VIEW,
        attr_kinds={"axis": AttrKind.DIM},
        shared_operands=(1,),
    ),
    OpDef(
        "scatter_add",
        _scatter_type,
        _scatter_ref,
        _scatter_vjp,
        _scatter_factors,
        attr_kinds={"axis": AttrKind.DIM},
    ),
]
