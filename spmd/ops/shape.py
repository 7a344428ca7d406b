"""Shape ops: constant, iota, broadcast_in_dim, reshape, transpose, sharding_constraint.

slice, pad, concatenate and rev, whose dims are blocked, live in spmd/ops/slicing.py.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.errors import ShapeError
from spmd.ir.types import TensorType
from spmd.ops.common import LETTERS, letters
from spmd.ops.elementwise import elementwise_factors
from spmd.ops.opdef import ZERO_GRAD, AttrKind, Factors, Linearity, OpDef, Trait


def _fresh(n: int, used: str = "") -> str:
    return "".join([c for c in LETTERS if c not in used][:n])


# constant / iota ------------------------------------------------------------------------


def _constant_type(*, value: np.ndarray, weak: bool = False) -> TensorType:
    return TensorType(value.shape, dtypes.canonical(value.dtype), weak)


def _iota_type(*, dtype: str, shape: tuple[int, ...], dimension: int) -> TensorType:
    if not 0 <= dimension < max(len(shape), 1):
        raise ShapeError(f"iota dimension {dimension} out of range for shape {shape}")
    return TensorType(shape, dtype)


def _iota_ref(*, dtype: str, shape: tuple[int, ...], dimension: int) -> np.ndarray:
    ramp = np.arange(shape[dimension], dtype=dtypes.to_numpy(dtype)) if shape else np.zeros(())
    view = [1] * len(shape)
    if shape:
        view[dimension] = shape[dimension]
    return np.broadcast_to(ramp.reshape(view), shape).astype(dtypes.to_numpy(dtype))


# broadcast_in_dim ------------------------------------------------------------------------


def _broadcast_type(
    x: TensorType, *, shape: tuple[int, ...], broadcast_dimensions: tuple[int, ...]
) -> TensorType:
    dims = broadcast_dimensions
    ok = (
        len(dims) == x.ndim
        and all(0 <= d < len(shape) for d in dims)
        and list(dims) == sorted(set(dims))
    )
    if ok:
        ok = all(x.shape[i] in (1, shape[d]) for i, d in enumerate(dims))
    if not ok:
        raise ShapeError(
            f"cannot broadcast shape {x.shape} to {shape} along dims {dims}",
            hint="each operand dim must be 1 or equal the target dim",
        )
    return TensorType(shape, x.dtype, x.weak)


def _broadcast_ref(
    x: np.ndarray, *, shape: tuple[int, ...], broadcast_dimensions: tuple[int, ...]
) -> np.ndarray:
    view = [1] * len(shape)
    for i, d in enumerate(broadcast_dimensions):
        view[d] = x.shape[i]
    return np.broadcast_to(x.reshape(view), shape).copy()


def _broadcast_factors(
    x: TensorType, *, shape: tuple[int, ...], broadcast_dimensions: tuple[int, ...]
) -> Factors:
    out = list(_fresh(len(shape)))
    operand: list[str | None] = []
    for i, d in enumerate(broadcast_dimensions):
        operand.append(out[d] if x.shape[i] == shape[d] else None)
    return Factors((tuple(operand),), (tuple(out),))


def _broadcast_vjp(
    ct: Any, x: Any, *, out: Any, shape: tuple[int, ...], broadcast_dimensions: tuple[int, ...]
) -> Any:
    dims = broadcast_dimensions
    summed = [d for d in range(len(shape)) if d not in dims]
    summed += [d for i, d in enumerate(dims) if x.type.shape[i] == 1 and shape[d] != 1]
    return prim.reshape(prim.reduce_sum(ct, sorted(summed)), x.type.shape)


# reshape --------------------------------------------------------------------------------


def _reshape_type(x: TensorType, *, new_sizes: tuple[int, ...]) -> TensorType:
    if math.prod(new_sizes) != x.size or any(s < 0 for s in new_sizes):
        raise ShapeError(
            f"cannot reshape {x.shape} ({x.size} elements) to {new_sizes}",
            hint="the sizes must multiply to the same element count",
        )
    return TensorType(new_sizes, x.dtype, x.weak)


def reshape_groups(src: tuple[int, ...], dst: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Split a reshape into groups of source and target dims with equal products."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        gi, gj = [], []
        pi = pj = 1
        while True:
            if (
                pi == pj
                and (gi or gj)
                and (pi != 1 or (i >= len(src) or src[i] != 1) and (j >= len(dst) or dst[j] != 1))
            ):
                break
            if (pi <= pj and i < len(src)) or j >= len(dst):
                if i >= len(src):
                    break
                gi.append(i)
                pi *= src[i]
                i += 1
            else:
                gj.append(j)
                pj *= dst[j]
                j += 1
        groups.append((gi, gj))
    return groups


def _reshape_factors(x: TensorType, *, new_sizes: tuple[int, ...]) -> Factors:
    """Each group of dims with equal products maps its major dims to one factor.

    Merging (a, b) -> (ab): a's factor goes to the merged dim, b is blocked. Splitting
    (ab) -> (a, b): the dim's factor goes to the new major dim. The partitioner checks
    that the shard count divides the major dim, and reshards otherwise (even_split).
    """
    operand: list[str | None] = [None] * x.ndim
    result: list[str | None] = [None] * len(new_sizes)
    blocked = []
    names = iter(LETTERS)
    for gi, gj in reshape_groups(x.shape, new_sizes):
        gi = [d for d in gi if x.shape[d] != 1]
        gj = [d for d in gj if new_sizes[d] != 1]
        if not gi or not gj:
            continue
        major = next(names)
        operand[gi[0]] = major
        result[gj[0]] = major
        for d in gi[1:]:
            operand[d] = next(names)
            blocked.append(operand[d])
        for d in gj[1:]:
            result[d] = next(names)
    return Factors((tuple(operand),), (tuple(result),), blocked=frozenset(blocked), even_split=True)


# transpose ------------------------------------------------------------------------------


def _transpose_type(x: TensorType, *, permutation: tuple[int, ...]) -> TensorType:
    if sorted(permutation) != list(range(x.ndim)):
        raise ShapeError(
            f"transpose permutation {permutation} is not a permutation of {x.ndim} dims"
        )
    return TensorType(tuple(x.shape[p] for p in permutation), x.dtype, x.weak)


def _transpose_factors(x: TensorType, *, permutation: tuple[int, ...]) -> Factors:
    dims = letters(x.ndim)
    return Factors.parse(dims + "->" + "".join(dims[p] for p in permutation))


OPS = [
    OpDef(
        "constant",
        _constant_type,
        lambda *, value, weak=False: value,
        ZERO_GRAD,
        lambda *, value, weak=False: Factors((), (tuple(letters(value.ndim)),)),
        traits=Trait.SOURCE | Trait.OWN_LAYOUT,
    ),
    OpDef(
        "iota",
        _iota_type,
        _iota_ref,
        ZERO_GRAD,
        lambda *, dtype, shape, dimension: Factors((), (tuple(letters(len(shape))),)),
        traits=Trait.SOURCE | Trait.OWN_LAYOUT,
        attr_kinds={"shape": AttrKind.SHAPE, "dimension": AttrKind.DIM},
    ),
    OpDef(
        "broadcast_in_dim",
        _broadcast_type,
        _broadcast_ref,
        _broadcast_vjp,
        _broadcast_factors,
        linear=Linearity.JOINT,
        traits=Trait.VIEW | Trait.BROADCAST,
        attr_kinds={"shape": AttrKind.SHAPE, "broadcast_dimensions": AttrKind.DIM_MAP},
        shared_operands=(),
    ),
    OpDef(
        "reshape",
        _reshape_type,
        lambda x, *, new_sizes: x.reshape(new_sizes),
        lambda ct, x, *, out, new_sizes: prim.reshape(ct, x.type.shape),
        _reshape_factors,
        linear=Linearity.JOINT,
        traits=Trait.VIEW,
        attr_kinds={"new_sizes": AttrKind.SHAPE},
        shared_operands=(),
    ),
    OpDef(
        "transpose",
        _transpose_type,
        lambda x, *, permutation: np.transpose(x, permutation),
        lambda ct, x, *, out, permutation: prim.transpose(ct, np.argsort(permutation)),
        _transpose_factors,
        linear=Linearity.JOINT,
        traits=Trait.VIEW,
        attr_kinds={"permutation": AttrKind.DIM_MAP},
        shared_operands=(),
    ),
    OpDef(
        "sharding_constraint",
        lambda x, *, sharding: x,
        lambda x, *, sharding: x,
        lambda ct, x, *, out, sharding: ct,
        elementwise_factors,
        linear=Linearity.JOINT,
        traits=Trait.ANNOTATION,
    ),
]
