"""Fused scaled dot-product attention (JAX's jax.nn.dot_product_attention) and its backward.

dot_product_attention(q [*b,T,N,H], k [*b,S,K,H], v [*b,S,K,Hv] [, bias] [, mask]) returns
(out [*b,T,N,Hv], lse [*b,N,T] float32): lse, the log-sum-exp of each score row, is what
the backward needs to rebuild the probabilities tile by tile, so no S x S array is ever
saved. N a multiple of K is grouped-query attention (query head n reads kv head n // (N/K)).
bias/mask have rank len(b)+3, [*b,N,T,S], each dim full or 1 (broadcast).

Sharding rule: batch dims and heads are factors (K shares the heads factor: contiguous head
groups stay together when the mesh axis divides K); T, S and the head dims are blocked.
The references (attention_ref.py) are the unfused oracle (they build the S x S scores); backends run a
tiled online-softmax kernel instead (backends/cpu/attention.py).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.autodiff import vjp
from spmd.errors import DTypeError, ShapeError
from spmd.ir.types import TensorType
from spmd.ops.attention_ref import (
    LARGE_NEGATIVE,
    bwd_ref,
    fwd_ref,
    grouped,
    grouped_scores,
    keep_mask,
    reduce_to,
    split_extra,
    ungroup,
    ungroup_scores,
)
from spmd.ops.opdef import Factors, OpDef
from spmd.tracing import bind

# The oracle's helpers live in attention_ref; backends/cpu/attention.py imports them from here.
__all__ = [
    "LARGE_NEGATIVE",
    "OPS",
    "attention_flops",
    "grouped",
    "grouped_scores",
    "keep_mask",
    "reduce_to",
    "ungroup",
    "ungroup_scores",
]


def _check(
    q: TensorType,
    k: TensorType,
    v: TensorType,
    extra: tuple[TensorType, ...],
    has_bias: bool,
    has_mask: bool,
) -> int:
    """Validate shapes; returns the number of batch dims."""
    if q.ndim < 3 or k.ndim != q.ndim or v.ndim != q.ndim:
        raise ShapeError(
            f"dot_product_attention needs query [..., T, N, H] and key/value "
            f"[..., S, K, H] of one rank, got {q.shape}, {k.shape}, {v.shape}",
            hint="lay out as [batch, seq, heads, head_dim]",
        )
    nb = q.ndim - 3
    if q.shape[:nb] != k.shape[:nb] or k.shape[:nb] != v.shape[:nb]:
        raise ShapeError(
            f"dot_product_attention batch dims differ: {q.shape}, {k.shape}, {v.shape}"
        )
    n, h = q.shape[-2:]
    s, kh, kd = k.shape[-3:]
    if v.shape[-3] != s or v.shape[-2] != kh:
        raise ShapeError(f"key {k.shape} and value {v.shape} need the same seq and heads")
    if kd != h:
        raise ShapeError(f"query head dim {h} != key head dim {kd}")
    if kh == 0 or n % kh:
        raise ShapeError(
            f"query heads {n} must be a multiple of key/value heads {kh}",
            hint="grouped-query attention shares each kv head among N/K heads",
        )
    for dt in (q.dtype, k.dtype, v.dtype):
        if not dtypes.is_float(dt) or dt != q.dtype:
            raise DTypeError(
                f"dot_product_attention needs float q, k, v of one dtype, got "
                f"{q.dtype}, {k.dtype}, {v.dtype}"
            )
    full = q.shape[:nb] + (n, q.shape[-3], s)
    for t, what in zip(extra, [w for w, on in (("bias", has_bias), ("mask", has_mask)) if on]):
        if t.ndim != len(full) or any(d not in (1, f) for d, f in zip(t.shape, full)):
            raise ShapeError(
                f"dot_product_attention {what} has shape {t.shape}; it must "
                f"broadcast to [batch, heads, T, S] = {full} with the same rank"
            )
        if what == "mask" and t.dtype != "bool":
            raise DTypeError(f"dot_product_attention mask must be bool, got {t.dtype}")
    return nb


def _fwd_type(
    q: TensorType,
    k: TensorType,
    v: TensorType,
    *extra: TensorType,
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> tuple[TensorType, ...]:
    nb = _check(q, k, v, extra, has_bias, has_mask)
    out = TensorType(q.shape[:-1] + (v.shape[-1],), q.dtype)
    lse = TensorType(q.shape[:nb] + (q.shape[-2], q.shape[-3]), "float32")
    return out, lse


def _bwd_type(
    q: TensorType,
    k: TensorType,
    v: TensorType,
    out: TensorType,
    lse: TensorType,
    d_out: TensorType,
    *extra: TensorType,
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> tuple[TensorType, ...]:
    _check(q, k, v, extra, has_bias, has_mask)
    grads = (q, k, v)
    return grads + ((extra[0].with_dtype("float32"),) if has_bias else ())


def _dims(q: TensorType, k: TensorType, extra: tuple[TensorType, ...]) -> Factors:
    """Batch letters a.., heads 'n'; T, S, H blocked (they are contracted through a softmax)."""
    nb = q.ndim - 3
    batch = tuple(f"b{i}" for i in range(nb))
    qd = batch + ("t", "n", "h")
    kd = batch + ("s", "n", "h")
    vd = batch + ("s", "n", "v")
    full = q.shape[:nb] + (q.shape[-2], q.shape[-3], k.shape[-3])
    names = batch + ("n", "t", "s")
    ed = tuple(
        tuple(f if d != 1 or fd == 1 else None for f, d, fd in zip(names, t.shape, full))
        for t in extra
    )
    return Factors((qd, kd, vd) + ed, (), blocked=frozenset({"t", "s", "h", "v"}))


def _fwd_factors(
    q: TensorType, k: TensorType, v: TensorType, *extra: TensorType, **_: Any
) -> Factors:
    f = _dims(q, k, extra)
    nb = q.ndim - 3
    out = f.operands[0][:-1] + ("v",)
    lse = f.operands[0][:nb] + ("n", "t")
    return Factors(f.operands, (out, lse), blocked=f.blocked)


def _bwd_factors(
    q: TensorType,
    k: TensorType,
    v: TensorType,
    out: TensorType,
    lse: TensorType,
    d_out: TensorType,
    *extra: TensorType,
    has_bias: bool,
    **_: Any,
) -> Factors:
    f = _dims(q, k, extra)
    nb = q.ndim - 3
    qd, kd, vd = f.operands[:3]
    od = qd[:-1] + ("v",)
    ld = qd[:nb] + ("n", "t")
    ops = (qd, kd, vd, od, ld, od) + f.operands[3:]
    return Factors(ops, (qd, kd, vd) + f.operands[3 : 4 if has_bias else 3], blocked=f.blocked)


def _fwd_vjp(
    cts: tuple[Any, ...],
    q: Any,
    k: Any,
    v: Any,
    *extra: Any,
    out: Any,
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> tuple[Any, ...]:
    """The fused backward op on (q, k, v, out, lse, d_out). lse's cotangent (used by
    nn.ring_attention, which merges blocks by their lse) enters as one more value column:
    d lse / d scores = the probabilities, so with v' = [v, 1], out' = [out, 0] and
    d_out' = [d_out, d_lse] the backward's d_p gains d_lse per row and its delta does not."""
    d_out, d_lse = cts[0], cts[1] if len(cts) > 1 else None
    if d_out is None and d_lse is None:
        return (None,) * (3 + len(extra))
    o, lse = out
    v_in = v
    last = o.type.ndim - 1
    if d_out is None:
        d_out = prim.full(o.type.shape, 0, o.type.dtype)
    if d_lse is not None:
        # d_lse [*b,N,T] as a column [*b,T,N,1]
        nb = last - 2
        col = prim.transpose(d_lse, (*range(nb), nb + 1, nb))
        col = prim.convert_element_type(prim.expand_dims(col, (last,)), o.type.dtype)
        d_out = prim.concatenate([d_out, col], last)
        o = prim.concatenate([o, prim.zeros_like(col)], last)
        v = prim.concatenate([v, prim.full(v.type.shape[:-1] + (1,), 1, v.type.dtype)], last)
    grads = bind(
        "dot_product_attention_bwd",
        q,
        k,
        v,
        o,
        lse,
        d_out,
        *extra,
        scale=scale,
        is_causal=is_causal,
        has_bias=has_bias,
        has_mask=has_mask,
    )
    result = list(grads[:3])
    if d_lse is not None:
        result[2] = prim.slice_in_dim(result[2], 0, v_in.type.shape[-1], 1, last)
    if has_bias:
        result.append(prim.convert_element_type(grads[3], extra[0].type.dtype))
    if has_mask:
        result.append(None)
    return tuple(result)


def _unfused(
    q: Any,
    k: Any,
    v: Any,
    extra: tuple[Any, ...],
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> Any:
    """The op's forward composed of primitive ops (for derivatives of its backward only:
    it builds the S x S scores)."""
    bias, mask = split_extra(extra, has_bias, has_mask)
    nb = q.type.ndim - 3
    batch = tuple(range(nb))
    n, kh = q.type.shape[-2], k.type.shape[-2]
    t, s = q.type.shape[-3], k.type.shape[-3]
    k, v = _repeat_heads(k, n // kh), _repeat_heads(v, n // kh)
    # "...tnh,...snh->...nts": batch dims and heads are dot_general's batch, h contracts
    logits = prim.dot_general(q, k, (((nb + 2,), (nb + 2,)), ((*batch, nb + 1), (*batch, nb + 1))))
    logits = prim.mul(logits, scale)
    shape, dtype = logits.type.shape, logits.type.dtype
    every = tuple(range(nb + 3))
    if bias is not None:
        logits = prim.add(
            logits, prim.broadcast_in_dim(prim.convert_element_type(bias, dtype), shape, every)
        )
    keep = None
    if is_causal:
        tril = prim.constant(np.tril(np.ones((t, s), bool)))
        keep = prim.broadcast_in_dim(tril, shape, (nb + 1, nb + 2))
    if mask is not None:
        wide = prim.broadcast_in_dim(mask, shape, every)
        keep = wide if keep is None else prim.bitwise_and(wide, keep)
    if keep is not None:
        logits = prim.select(keep, logits, LARGE_NEGATIVE)
    rows = every[:-1]
    peak = prim.broadcast_in_dim(
        prim.stop_gradient(prim.reduce_max(logits, (nb + 2,))), shape, rows
    )
    weights = prim.exp(prim.sub(logits, peak))
    probs = prim.div(
        weights, prim.broadcast_in_dim(prim.reduce_sum(weights, (nb + 2,)), shape, rows)
    )
    # "...nts,...snh->...tnh": s contracts; the result [*b,n,t,h] puts t before n
    out = prim.dot_general(probs, v, (((nb + 2,), (nb,)), ((*batch, nb), (*batch, nb + 1))))
    return prim.transpose(out, (*batch, nb + 1, nb, nb + 2))


def _repeat_heads(x: Any, r: int) -> Any:
    """x [*b,S,K,H] with each head repeated r times in place: [*b,S,K*r,H] (numpy.repeat)."""
    shape = x.type.shape
    nb = len(shape) - 3
    big = shape[: nb + 2] + (r,) + shape[nb + 2 :]
    wide = prim.broadcast_in_dim(x, big, (*range(nb + 2), nb + 3))
    return prim.reshape(wide, shape[: nb + 1] + (shape[nb + 1] * r, shape[nb + 2]))


def _bwd_vjp(
    cts: tuple[Any, ...],
    q: Any,
    k: Any,
    v: Any,
    o: Any,
    lse: Any,
    d_out: Any,
    *extra: Any,
    out: Any,
    scale: float,
    is_causal: bool,
    has_bias: bool,
    has_mask: bool,
) -> tuple[Any, ...]:
    """Second-order derivatives: the backward as a function of (q, k, v, d_out[, bias]) is
    the VJP of the unfused forward; out and lse are functions of q, k, v, so all of the
    dependence flows through those (their own cotangents are zero)."""
    attrs = (scale, is_causal, has_bias, has_mask)
    mask = extra[1:] if has_bias else extra

    def backward(q: Any, k: Any, v: Any, d_out: Any, *bias: Any) -> Any:
        _, pullback = vjp(lambda q, k, v, *b: _unfused(q, k, v, b + mask, *attrs), q, k, v, *bias)
        return pullback(d_out)

    bias = extra[:1] if has_bias else ()
    _, pullback = vjp(backward, q, k, v, d_out, *bias)
    filled = tuple(
        prim.full(t.type.shape, 0, t.type.dtype) if ct is None else ct for ct, t in zip(cts, out)
    )
    grads = pullback(filled)
    result = [*grads[:3], None, None, grads[3]]
    if has_bias:
        result.append(grads[4])
    if has_mask:
        result.append(None)
    return tuple(result)


def attention_flops(
    q_shape: tuple[int, ...], k_shape: tuple[int, ...], hv: int, is_causal: bool
) -> float:
    """Matmul FLOPs of the forward (QK^T and PV), counting only tiles a causal kernel runs."""
    nb = len(q_shape) - 3
    t, n, h = q_shape[-3:]
    s = k_shape[-3]
    pairs = t * s
    if is_causal:  # row r keeps columns 0..r (JAX's tril mask)
        pairs = t * (t + 1) / 2 if t <= s else s * (s + 1) / 2 + (t - s) * s
    return 2.0 * math.prod(q_shape[:nb]) * n * pairs * (h + hv)


OPS = [
    OpDef(
        "dot_product_attention",
        _fwd_type,
        fwd_ref,
        _fwd_vjp,
        _fwd_factors,
        multi_output=True,
        doc="softmax(q k^T * scale + bias, masked) v without an S x S buffer; also lse.",
    ),
    OpDef(
        "dot_product_attention_bwd",
        _bwd_type,
        bwd_ref,
        _bwd_vjp,
        _bwd_factors,
        multi_output=True,
        doc="dq, dk, dv (and dbias) of dot_product_attention, fused.",
    ),
]
