"""spmd.nn: activations and normalisations (JAX's jax.nn names), composed of spmd.numpy ops.

>>> import spmd.nn
>>> float(spmd.nn.relu(-1.0))
0.0
"""

from __future__ import annotations

import math
from typing import Any

from spmd import dtypes, lax
from spmd import numpy as snp
from spmd.numpy.core import asarray, float_type
from spmd.tracing import type_of


def _float(x: Any) -> Any:
    return float_type(asarray(x))


def relu(x: Any) -> Any:
    """max(x, 0)."""
    return snp.maximum(asarray(x), 0)


def relu6(x: Any) -> Any:
    return snp.minimum(snp.maximum(asarray(x), 0), 6)


def sigmoid(x: Any) -> Any:
    return lax.logistic(_float(x))


def silu(x: Any) -> Any:
    """x * sigmoid(x) (also called swish)."""
    x = _float(x)
    return lax.mul(x, lax.logistic(x))


swish = silu


def gelu(x: Any, approximate: bool = True) -> Any:
    """GELU: the tanh approximation by default, the exact erf form with approximate=False."""
    x = _float(x)
    if approximate:
        inner = snp.multiply(math.sqrt(2 / math.pi), snp.add(x, snp.multiply(0.044715, x * x * x)))
        return snp.multiply(snp.multiply(0.5, x), snp.add(1.0, lax.tanh(inner)))
    return snp.multiply(
        snp.multiply(0.5, x), snp.add(1.0, lax.erf(snp.multiply(x, 1 / math.sqrt(2))))
    )


def softplus(x: Any) -> Any:
    """log(1 + exp(x)), stable for large |x|."""
    x = _float(x)
    return snp.add(snp.maximum(x, 0.0), lax.log1p(lax.exp(lax.neg(lax.abs(x)))))


def _axes(x: Any, axis: Any) -> tuple[int, ...]:
    ndim = type_of(x).ndim
    if axis is None:
        return tuple(range(ndim))
    axis = (axis,) if isinstance(axis, int) else tuple(axis)
    return tuple(sorted(a % ndim for a in axis))


def _shifted(x: Any, axis: Any) -> tuple[Any, tuple[int, ...]]:
    """x minus its (gradient-free) max over axis, with -inf rows kept finite."""
    axes = _axes(x, axis)
    peak = lax.stop_gradient(snp.max(x, axis=axes, keepdims=True))
    peak = snp.where(snp.isfinite(peak), peak, 0.0)
    return snp.subtract(x, peak), axes


def logsumexp(a: Any, axis: Any = None, keepdims: bool = False) -> Any:
    """log(sum(exp(a))) over axis, computed around the max so it neither over- nor underflows."""
    x = _float(a)
    axes = _axes(x, axis)
    peak = lax.stop_gradient(snp.max(x, axis=axes, keepdims=True))
    peak = snp.where(snp.isfinite(peak), peak, 0.0)
    total = snp.sum(lax.exp(snp.subtract(x, peak)), axis=axes, keepdims=True)
    out = snp.add(lax.log(total), peak)
    return out if keepdims else snp.squeeze(out, axes)


def softmax(x: Any, axis: Any = -1) -> Any:
    """exp(x) / sum(exp(x)) over axis (shifted by the max for stability)."""
    shifted, axes = _shifted(_float(x), axis)
    unnormalized = lax.exp(shifted)
    return snp.true_divide(unnormalized, snp.sum(unnormalized, axis=axes, keepdims=True))


def log_softmax(x: Any, axis: Any = -1) -> Any:
    shifted, axes = _shifted(_float(x), axis)
    total = snp.sum(lax.exp(shifted), axis=axes, keepdims=True)
    return snp.subtract(shifted, lax.log(total))


def one_hot(x: Any, num_classes: int, dtype: Any = "float32", axis: int = -1) -> Any:
    """1 where the class index equals x, along a new axis of size num_classes."""
    x = asarray(x)
    t = type_of(x)
    out_ndim = t.ndim + 1
    axis = axis % out_ndim
    shape = t.shape[:axis] + (num_classes,) + t.shape[axis:]
    kept = tuple(i for i in range(out_ndim) if i != axis)
    labels = lax.broadcast_in_dim(x, shape, kept)
    classes = lax.iota(t.dtype, shape, axis)
    return lax.convert_element_type(lax.eq(labels, classes), dtypes.canonical(dtype))


def standardize(x: Any, axis: Any = -1, epsilon: float = 1e-5) -> Any:
    """(x - mean) / sqrt(var + epsilon) over axis (layer normalisation without scale)."""
    x = _float(x)
    centre = snp.mean(x, axis=axis, keepdims=True)
    variance = snp.var(x, axis=axis, keepdims=True)
    return snp.multiply(snp.subtract(x, centre), lax.rsqrt(snp.add(variance, epsilon)))


def layer_norm(
    x: Any, scale: Any = None, bias: Any = None, axis: Any = -1, epsilon: float = 1e-5
) -> Any:
    """standardize(x) * scale + bias."""
    out = standardize(x, axis, epsilon)
    if scale is not None:
        out = snp.multiply(out, scale)
    if bias is not None:
        out = snp.add(out, bias)
    return out


def dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    bias: Any = None,
    mask: Any = None,
    *,
    scale: float | None = None,
    is_causal: bool = False,
    implementation: str | None = None,
) -> Any:
    """softmax(query key^T * scale + bias, masked) value, as jax.nn.dot_product_attention.

    query [B, T, N, H] (or [T, N, H]), key/value [B, S, K, H] with N a multiple of K
    (grouped-query attention). bias (added to the scores) and mask (bool, True keeps) must
    broadcast to [B, N, T, S]. One fused op: no S x S array is stored, forward or backward.
    scale defaults to 1/sqrt(H).

    >>> import numpy as np, spmd.nn
    >>> q = np.ones((1, 4, 2, 8), np.float32)
    >>> spmd.nn.dot_product_attention(q, q, q, is_causal=True).shape
    (1, 4, 2, 8)
    """
    from spmd.errors import ShapeError, SpmdError
    from spmd.tracing import bind

    if implementation not in (None, "xla", "cudnn"):
        raise SpmdError(
            f"dot_product_attention implementation={implementation!r}",
            hint="use None (the fused op runs on every backend)",
        )
    q, k, v = (asarray(a) for a in (query, key, value))
    ndim = type_of(q).ndim
    if ndim not in (3, 4):
        raise ShapeError(
            f"dot_product_attention needs query of rank 3 or 4, got {ndim}",
            hint="lay out as [batch, seq, heads, head_dim]",
        )
    extra = []
    for what, x in (("bias", bias), ("mask", mask)):
        if x is None:
            continue
        x = asarray(x)
        if what == "mask":
            x = x.astype("bool") if type_of(x).dtype != "bool" else x
        t = type_of(x)
        if t.ndim > ndim:
            raise ShapeError(
                f"dot_product_attention {what} of shape {t.shape} has more dims "
                f"than [batch, heads, T, S]"
            )
        if t.ndim < ndim:  # leading broadcast dims, as numpy
            x = snp.reshape(x, (1,) * (ndim - t.ndim) + t.shape)
        extra.append(x)
    if scale is None:
        scale = 1.0 / math.sqrt(type_of(q).shape[-1])
    out, _ = bind(
        "dot_product_attention",
        q,
        k,
        v,
        *extra,
        scale=float(scale),
        is_causal=bool(is_causal),
        has_bias=bias is not None,
        has_mask=mask is not None,
    )
    return out


def ring_attention(
    query: Any,
    key: Any,
    value: Any,
    *,
    axis_name: Any,
    scale: float | None = None,
    is_causal: bool = False,
) -> Any:
    """dot_product_attention over a sequence split across `axis_name`, called inside
    shard_map: device i holds positions [i*T, (i+1)*T) of query, key and value (JAX's
    [batch, seq, heads, head_dim] layout, GQA allowed). The key/value blocks travel around
    the ring by ppermute, one hop per step; each device attends its queries to the block
    it holds with the fused op and merges the partial results by their log-sum-exp (an
    online softmax over blocks). Nothing is gathered: each step's ppermute of the next
    block is independent of that step's attention, so it overlaps with it. The backward
    (autodiff: lse's cotangent is part of the fused op's VJP) sends the key/value
    gradients back around the ring the same way.

    A separate function, not dot_product_attention on sequence-sharded inputs, because the
    collectives are explicit (shard_map, as JAX's ring attention kernels are written); under
    jit, dot_product_attention gathers a sharded sequence.

    >>> import numpy as np, spmd
    >>> mesh = spmd.make_mesh((4,), ("seq",))
    >>> q = np.random.default_rng(0).standard_normal((1, 8, 2, 4)).astype(np.float32)
    >>> ring = spmd.shard_map(lambda q: spmd.nn.ring_attention(q, q, q, axis_name="seq",
    ...     is_causal=True), mesh, spmd.P(None, "seq"), spmd.P(None, "seq"))
    >>> want = spmd.nn.dot_product_attention(q, q, q, is_causal=True)
    >>> bool(np.allclose(np.asarray(ring(q)), np.asarray(want), atol=1e-6))
    True
    """
    from spmd.collective_api import axis_index, axis_size, ppermute
    from spmd.errors import ShapeError
    from spmd.tracing import bind

    q, k, v = (asarray(a) for a in (query, key, value))
    shape = type_of(q).shape
    if is_causal and shape[-3] != type_of(k).shape[-3]:
        raise ShapeError(
            f"ring_attention with is_causal needs query and key blocks of one "
            f"length, got {shape[-3]} and {type_of(k).shape[-3]}",
            hint="split query and key over the same mesh axis",
        )
    if scale is None:
        scale = 1.0 / math.sqrt(shape[-1])
    n = axis_size(axis_name)
    me = axis_index(axis_name)
    ring = [(i, (i + 1) % n) for i in range(n)]
    out = lse = None
    for step in range(n):
        # After `step` hops this device holds the block of device me - step (mod n).
        why = f"ring attention: key/value blocks, hop {step + 1} of {n - 1}"
        nxt = ppermute((k, v), axis_name, ring, reason=why) if step < n - 1 else None
        extra = ()
        if is_causal and step:  # an earlier block is kept whole, a later one not at all
            extra = (snp.reshape(me >= step, (1,) * len(shape)),)
        o, blk = bind(
            "dot_product_attention",
            q,
            k,
            v,
            *extra,
            scale=float(scale),
            is_causal=is_causal and not step,
            has_bias=False,
            has_mask=bool(extra),
        )
        out, lse = _merge(out, lse, o.astype("float32"), blk)
        if nxt is not None:
            k, v = nxt
    return out.astype(type_of(q).dtype)


def _merge(out: Any, lse: Any, o: Any, blk: Any) -> tuple[Any, Any]:
    """Two softmax-normalised partial results (out [..., T, N, H], lse [..., N, T]) as one."""
    if out is None:
        return o, blk
    new = snp.logaddexp(lse, blk)

    def weight(x: Any) -> Any:  # [..., N, T] -> [..., T, N, 1]
        return snp.exp(snp.swapaxes(x - new, -1, -2))[..., None]

    return out * weight(lse) + o * weight(blk), new
