"""dot_general: batched contraction, JAX's dimension numbers.

Sharding rule: batch factors shared by both operands and the result, free factors of
each side pass to the result, contracting factors reduce (a sharded one leaves the
result partial): [b,m,k]x[b,k,n] is "bmk,bkn->bmn" with k reduced.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.errors import ShapeError
from spmd.ir.types import TensorType
from spmd.ops.common import LETTERS, same_dtypes
from spmd.ops.opdef import AttrKind, Factors, Linearity, OpDef

DimNums = tuple[tuple[tuple[int, ...], tuple[int, ...]], tuple[tuple[int, ...], tuple[int, ...]]]


def free_dims(ndim: int, contract: tuple[int, ...], batch: tuple[int, ...]) -> list[int]:
    return [i for i in range(ndim) if i not in contract and i not in batch]


def _dot_type(
    lhs: TensorType,
    rhs: TensorType,
    *,
    dimension_numbers: DimNums,
    preferred_element_type: str | None,
) -> TensorType:
    (lc, rc), (lb, rb) = dimension_numbers
    same_dtypes("dot_general", lhs, rhs)
    bad = len(lc) != len(rc) or len(lb) != len(rb)
    bad = bad or any(not 0 <= d < lhs.ndim for d in lc + lb)
    bad = bad or any(not 0 <= d < rhs.ndim for d in rc + rb)
    bad = bad or len(set(lc + lb)) != len(lc + lb) or len(set(rc + rb)) != len(rc + rb)
    if bad:
        raise ShapeError(
            f"dot_general dimension numbers {dimension_numbers} do not fit "
            f"shapes {lhs.shape} and {rhs.shape}"
        )
    for a, b, what in [(lc, rc, "contracting"), (lb, rb, "batch")]:
        for i, j in zip(a, b):
            if lhs.shape[i] != rhs.shape[j]:
                raise ShapeError(
                    f"dot_general {what} dims differ: lhs {lhs.shape} dim {i} is "
                    f"{lhs.shape[i]} but rhs {rhs.shape} dim {j} is {rhs.shape[j]}",
                    hint="for x @ w the last dim of x must equal the first dim of w",
                )
    shape = tuple(lhs.shape[i] for i in lb)
    shape += tuple(lhs.shape[i] for i in free_dims(lhs.ndim, lc, lb))
    shape += tuple(rhs.shape[i] for i in free_dims(rhs.ndim, rc, rb))
    dtype = preferred_element_type or lhs.dtype
    return TensorType(shape, dtype, lhs.weak and rhs.weak)


def _dot_ref(
    lhs: np.ndarray,
    rhs: np.ndarray,
    *,
    dimension_numbers: DimNums,
    preferred_element_type: str | None,
) -> np.ndarray:
    """As a batched matmul (BLAS): lhs -> [batch, free, contract], rhs -> [batch, contract,
    free]; float16/bfloat16 accumulate in float32, as XLA does on CPU."""
    (lc, rc), (lb, rb) = dimension_numbers
    lf, rf = free_dims(lhs.ndim, lc, lb), free_dims(rhs.ndim, rc, rb)
    dtype = dtypes.to_numpy(preferred_element_type or dtypes.canonical(lhs.dtype))
    compute = np.float32 if dtype.name in ("bfloat16", "float16") else dtype
    if not dtypes.is_float(dtypes.canonical(dtype)):
        compute = np.int64  # integers wrap to the result type exactly as in its own width

    def size(x: np.ndarray, dims: Sequence[int]) -> int:
        return math.prod(x.shape[d] for d in dims)

    a = np.transpose(lhs, (*lb, *lf, *lc)).astype(compute, copy=False)
    b = np.transpose(rhs, (*rb, *rc, *rf)).astype(compute, copy=False)
    a = a.reshape(size(lhs, lb), size(lhs, lf), size(lhs, lc))
    b = b.reshape(size(rhs, rb), size(rhs, rc), size(rhs, rf))
    out = np.matmul(a, b)
    shape = [lhs.shape[d] for d in lb] + [lhs.shape[d] for d in lf] + [rhs.shape[d] for d in rf]
    with np.errstate(all="ignore"):
        return out.reshape(shape).astype(dtype)


def _dot_factors(
    lhs: TensorType,
    rhs: TensorType,
    *,
    dimension_numbers: DimNums,
    preferred_element_type: str | None,
) -> Factors:
    (lc, rc), (lb, rb) = dimension_numbers
    names = iter(LETTERS)
    ls: list[str | None] = [None] * lhs.ndim
    rs: list[str | None] = [None] * rhs.ndim
    for i, j in zip(lb, rb):
        ls[i] = rs[j] = next(names)
    reduce = []
    for i, j in zip(lc, rc):
        ls[i] = rs[j] = next(names)
        reduce.append(ls[i])
    for i in free_dims(lhs.ndim, lc, lb):
        ls[i] = next(names)
    for j in free_dims(rhs.ndim, rc, rb):
        rs[j] = next(names)
    out = tuple(ls[i] for i in lb) + tuple(ls[i] for i in free_dims(lhs.ndim, lc, lb))
    out += tuple(rs[j] for j in free_dims(rhs.ndim, rc, rb))
    return Factors((tuple(ls), tuple(rs)), (out,), frozenset(reduce))


def _transpose_side(
    ct: Any,
    other: Any,
    me_ndim: int,
    my_contract: tuple[int, ...],
    my_batch: tuple[int, ...],
    other_contract: tuple[int, ...],
    other_batch: tuple[int, ...],
    ct_other: list[int],
    dtype: str,
) -> Any:
    """Cotangent of one operand: contract ct with the other operand, then permute back."""
    nb = len(my_batch)
    other_free = free_dims(other.type.ndim, other_contract, other_batch)
    d = prim.dot_general(
        ct, other, ((tuple(ct_other), tuple(other_free)), (tuple(range(nb)), tuple(other_batch)))
    )
    other_rest = [i for i in range(other.type.ndim) if i not in other_free and i not in other_batch]
    src = list(my_batch) + free_dims(me_ndim, my_contract, my_batch)
    src += [my_contract[other_contract.index(r)] for r in other_rest]
    d = prim.transpose(d, [src.index(j) for j in range(me_ndim)])
    return prim.convert_element_type(d, dtype)


def _dot_vjp(
    ct: Any,
    lhs: Any,
    rhs: Any,
    *,
    out: Any,
    dimension_numbers: DimNums,
    preferred_element_type: str | None,
) -> tuple[Any, Any]:
    (lc, rc), (lb, rb) = dimension_numbers
    nb = len(lb)
    nlf = len(free_dims(lhs.type.ndim, lc, lb))
    nrf = len(free_dims(rhs.type.ndim, rc, rb))
    ct_lf = list(range(nb, nb + nlf))
    ct_rf = list(range(nb + nlf, nb + nlf + nrf))
    if preferred_element_type is not None:
        ct = prim.convert_element_type(ct, lhs.type.dtype)
    d_lhs = _transpose_side(ct, rhs, lhs.type.ndim, lc, lb, rc, rb, ct_rf, lhs.type.dtype)
    d_rhs = _transpose_side(ct, lhs, rhs.type.ndim, rc, rb, lc, lb, ct_lf, rhs.type.dtype)
    return d_lhs, d_rhs


OPS = [
    OpDef(
        "dot_general",
        _dot_type,
        _dot_ref,
        _dot_vjp,
        _dot_factors,
        linear=Linearity.EACH,
        attr_kinds={"dimension_numbers": AttrKind.DOT_DIMS},
        shared_operands=(),
    )
]
