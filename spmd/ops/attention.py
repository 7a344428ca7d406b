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
from spmd.ops.common import lax as _lax
from spmd.ops.common import numpy as public_numpy
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
    lax, snp = _lax(), public_numpy()

    d_out, d_lse = cts[0], cts[1] if len(cts) > 1 else None
    if d_out is None and d_lse is None:
        return (None,) * (3 + len(extra))
    o, lse = out
    v_in = v
    if d_out is None:
        d_out = snp.zeros(o.type.shape, o.type.dtype)
    if d_lse is not None:
        col = snp.swapaxes(d_lse, -1, -2)[..., None].astype(o.type.dtype)
        d_out = snp.concatenate([d_out, col], axis=-1)
        o = snp.concatenate([o, snp.zeros_like(col)], axis=-1)
        v = snp.concatenate([v, snp.ones(v.type.shape[:-1] + (1,), v.type.dtype)], axis=-1)
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
        result[2] = result[2][..., : v_in.type.shape[-1]]
    if has_bias:
        result.append(lax.convert_element_type(grads[3], extra[0].type.dtype))
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
    snp = public_numpy()
    bias, mask = split_extra(extra, has_bias, has_mask)
    n, kh = q.type.shape[-2], k.type.shape[-2]
    t, s = q.type.shape[-3], k.type.shape[-3]
    k, v = snp.repeat(k, n // kh, axis=-2), snp.repeat(v, n // kh, axis=-2)
    logits = snp.einsum("...tnh,...snh->...nts", q, k) * scale
    if bias is not None:
        logits = logits + bias.astype(logits.dtype)
    keep = np.tril(np.ones((t, s), bool)) if is_causal else None
    if mask is not None:
        keep = mask if keep is None else snp.logical_and(mask, keep)
    if keep is not None:
        logits = snp.where(keep, logits, LARGE_NEGATIVE)
    peak = _lax().stop_gradient(snp.max(logits, axis=-1, keepdims=True))
    weights = snp.exp(logits - peak)
    probs = weights / snp.sum(weights, axis=-1, keepdims=True)
    return snp.einsum("...nts,...snh->...tnh", probs, v)


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
    lax = _lax()
    attrs = (scale, is_causal, has_bias, has_mask)
    mask = extra[1:] if has_bias else extra

    def backward(q: Any, k: Any, v: Any, d_out: Any, *bias: Any) -> Any:
        _, pullback = vjp(lambda q, k, v, *b: _unfused(q, k, v, b + mask, *attrs), q, k, v, *bias)
        return pullback(d_out)

    bias = extra[:1] if has_bias else ()
    _, pullback = vjp(backward, q, k, v, d_out, *bias)
    filled = tuple(
        lax.full(t.type.shape, 0, t.type.dtype) if ct is None else ct for ct, t in zip(cts, out)
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
