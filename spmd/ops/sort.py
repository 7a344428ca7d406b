"""Sorting along one dimension: sort (values) and argsort (stable int32 indices).

Sharding rule: every dim is its own factor and the sorted dim is blocked (gathered first).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.ir.types import TensorType
from spmd.ops.common import check_axis, letters
from spmd.ops.opdef import ZERO_GRAD, AttrKind, Factors, OpDef


def _sort_type(x: TensorType, *, dimension: int) -> TensorType:
    check_axis("sort", dimension, x.ndim)
    return x


def _argsort_type(x: TensorType, *, dimension: int) -> TensorType:
    check_axis("argsort", dimension, x.ndim)
    return TensorType(x.shape, "int32")


def _sort_ref(x: np.ndarray, *, dimension: int) -> np.ndarray:
    if x.ndim == 0:
        return x.copy()
    return np.sort(x, axis=dimension, kind="stable")


def _argsort_ref(x: np.ndarray, *, dimension: int) -> np.ndarray:
    if x.ndim == 0:
        return np.zeros((), np.int32)
    return np.argsort(x, axis=dimension, kind="stable").astype(np.int32)


def _sort_factors(x: TensorType, *, dimension: int) -> Factors:
    dims = letters(x.ndim)
    blocked = dims[dimension] if x.ndim else ""
    return Factors.parse(f"{dims}->{dims}", blocked=blocked)


def _sort_vjp(ct: Any, x: Any, *, out: Any, dimension: int) -> Any:
    """dx[idx[j]] = ct[j] along `dimension`: a scatter of ct through the sorting permutation."""
    t = x.type
    if t.ndim == 0:
        return ct
    dimension %= t.ndim
    n = t.shape[dimension]
    order = [d for d in range(t.ndim) if d != dimension] + [dimension]
    inverse = [int(i) for i in np.argsort(order)]
    rows = t.size // n if n else 0
    idx = prim.reshape(prim.transpose(bind_argsort(x, dimension), order), (rows, n))
    row_start = prim.mul(prim.iota("int32", (rows, n), 0), n)
    flat_idx = prim.reshape(prim.add(idx, row_start), (rows * n,))
    flat_ct = prim.reshape(prim.transpose(ct, order), (rows * n,))
    zeros = prim.full((rows * n,), 0, dtypes.canonical(t.dtype))
    scattered = prim.scatter_add(zeros, flat_idx, flat_ct, 0)
    moved = prim.reshape(scattered, tuple(t.shape[d] for d in order))
    return prim.transpose(moved, inverse)


def bind_argsort(x: Any, dimension: int) -> Any:
    from spmd.tracing import bind

    return bind("argsort", x, dimension=dimension)


OPS = [
    OpDef(
        "sort",
        _sort_type,
        _sort_ref,
        _sort_vjp,
        _sort_factors,
        attr_kinds={"dimension": AttrKind.DIM},
        shared_operands=(),
    ),
    OpDef(
        "argsort",
        _argsort_type,
        _argsort_ref,
        ZERO_GRAD,
        _sort_factors,
        attr_kinds={"dimension": AttrKind.DIM},
        shared_operands=(),
    ),
]
