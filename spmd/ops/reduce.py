"""Reductions: reduce (sum/max/min/prod/and/or over axes), argmax/argmin, cumsum.

Sharding rule of reduce over axis 1 of a matrix: "ij->i" with j a reduction factor, so a
sharded j leaves a result partial over its mesh axes (resolved by an all-reduce).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.errors import DTypeError, ShapeError
from spmd.ir.types import TensorType
from spmd.ops.common import check_axis, letters
from spmd.ops.opdef import ZERO_GRAD, AttrKind, Factors, Linearity, OpDef, Trait

KINDS = {"sum": np.sum, "max": np.max, "min": np.min, "prod": np.prod, "and": np.all, "or": np.any}


def _reduce_type(x: TensorType, *, kind: str, axes: tuple[int, ...]) -> TensorType:
    if kind not in KINDS:
        raise ShapeError(f"unknown reduction {kind!r}", hint=f"use one of {sorted(KINDS)}")
    for a in axes:
        check_axis(f"reduce_{kind}", a, x.ndim)
    if kind in ("and", "or") and x.dtype != "bool":
        raise DTypeError(f"reduce_{kind} needs bool, got {x.dtype}")
    return TensorType(tuple(s for i, s in enumerate(x.shape) if i not in axes), x.dtype, x.weak)


def _reduce_ref(x: np.ndarray, *, kind: str, axes: tuple[int, ...]) -> np.ndarray:
    if kind in ("max", "min") and x.size == 0:
        name = dtypes.canonical(x.dtype)
        if dtypes.is_float(name):
            fill = -np.inf if kind == "max" else np.inf
        elif name == "bool":
            fill = kind == "min"
        else:
            info = np.iinfo(x.dtype)
            fill = info.min if kind == "max" else info.max
        shape = tuple(s for i, s in enumerate(x.shape) if i not in axes)
        return np.full(shape, fill, dtype=x.dtype)
    with np.errstate(all="ignore"):
        return np.asarray(KINDS[kind](x, axis=axes), dtype=x.dtype)


def _reduce_factors(x: TensorType, *, kind: str, axes: tuple[int, ...]) -> Factors:
    dims = letters(x.ndim)
    out = "".join(c for i, c in enumerate(dims) if i not in axes)
    reduced = "".join(dims[a] for a in axes)
    return Factors.parse(f"{dims}->{out}", reduce=reduced, kind=kind)


def _keep_axes(value: Any, x: Any, axes: tuple[int, ...]) -> Any:
    """Broadcast a reduced value back to x's shape."""
    kept = tuple(i for i in range(x.type.ndim) if i not in axes)
    return prim.broadcast_in_dim(value, x.type.shape, kept)


def _reduce_vjp(ct: Any, x: Any, *, out: Any, kind: str, axes: tuple[int, ...]) -> Any:
    ct_full = _keep_axes(ct, x, axes)
    if kind == "sum":
        return ct_full
    if kind in ("max", "min"):
        # The cotangent is shared equally among the positions that reached the extremum.
        hit = prim.convert_element_type(prim.eq(x, _keep_axes(out, x, axes)), x.type.dtype)
        count = _keep_axes(prim.reduce_sum(hit, axes), x, axes)
        return prim.div(prim.mul(ct_full, hit), count)
    if kind == "prod":
        return prim.div(prim.mul(ct_full, _keep_axes(out, x, axes)), x)
    return None


def _arg_type(x: TensorType, *, axis: int, index_dtype: str) -> TensorType:
    check_axis("argmax", axis, x.ndim)
    return TensorType(tuple(s for i, s in enumerate(x.shape) if i != axis), index_dtype)


def _arg_ref(fn: Any) -> Any:
    def ref(x: np.ndarray, *, axis: int, index_dtype: str) -> np.ndarray:
        return np.asarray(fn(x, axis=axis), dtype=dtypes.to_numpy(index_dtype))

    return ref


def _arg_factors(x: TensorType, *, axis: int, index_dtype: str) -> Factors:
    dims = letters(x.ndim)
    out = "".join(c for i, c in enumerate(dims) if i != axis)
    return Factors.parse(f"{dims}->{out}", blocked=dims[axis])


def _cumsum_type(x: TensorType, *, axis: int, reverse: bool) -> TensorType:
    check_axis("cumsum", axis, x.ndim)
    return x


def _cumsum_ref(x: np.ndarray, *, axis: int, reverse: bool) -> np.ndarray:
    if reverse:
        return np.flip(np.cumsum(np.flip(x, axis), axis=axis, dtype=x.dtype), axis)
    return np.cumsum(x, axis=axis, dtype=x.dtype)


def _cumsum_factors(x: TensorType, *, axis: int, reverse: bool) -> Factors:
    dims = letters(x.ndim)
    return Factors.parse(f"{dims}->{dims}", blocked=dims[axis])


OPS = [
    OpDef(
        "reduce",
        _reduce_type,
        _reduce_ref,
        _reduce_vjp,
        _reduce_factors,
        linear=Linearity.SAME_REDUCTION,
        traits=Trait.REDUCTION,
        attr_kinds={"axes": AttrKind.DIMS},
        shared_operands=(),
    ),
    OpDef(
        "argmax",
        _arg_type,
        _arg_ref(np.argmax),
        ZERO_GRAD,
        _arg_factors,
        traits=Trait.REDUCTION,
        attr_kinds={"axis": AttrKind.DIM},
        shared_operands=(),
    ),
    OpDef(
        "argmin",
        _arg_type,
        _arg_ref(np.argmin),
        ZERO_GRAD,
        _arg_factors,
        traits=Trait.REDUCTION,
        attr_kinds={"axis": AttrKind.DIM},
        shared_operands=(),
    ),
    OpDef(
        "cumsum",
        _cumsum_type,
        _cumsum_ref,
        lambda ct, x, *, out, axis, reverse: prim.cumsum(ct, axis, not reverse),
        _cumsum_factors,
        linear=Linearity.JOINT,
        attr_kinds={"axis": AttrKind.DIM},
        shared_operands=(),
    ),
]
