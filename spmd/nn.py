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


def dot_product_attention(query: Any, key: Any, value: Any, bias: Any = None, mask: Any = None,
                          *, scale: float | None = None, is_causal: bool = False,
                          implementation: str | None = None) -> Any:
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
        raise SpmdError(f"dot_product_attention implementation={implementation!r}",
                        hint="use None (the fused op runs on every backend)")
    q, k, v = (asarray(a) for a in (query, key, value))
    ndim = type_of(q).ndim
    if ndim not in (3, 4):
        raise ShapeError(f"dot_product_attention needs query of rank 3 or 4, got {ndim}",
                         hint="lay out as [batch, seq, heads, head_dim]")
    extra = []
    for what, x in (("bias", bias), ("mask", mask)):
        if x is None:
            continue
        x = asarray(x)
        if what == "mask":
            x = x.astype("bool") if type_of(x).dtype != "bool" else x
        t = type_of(x)
        if t.ndim > ndim:
            raise ShapeError(f"dot_product_attention {what} of shape {t.shape} has more dims "
                             f"than [batch, heads, T, S]")
        if t.ndim < ndim:  # leading broadcast dims, as numpy
            x = snp.reshape(x, (1,) * (ndim - t.ndim) + t.shape)
        extra.append(x)
    if scale is None:
        scale = 1.0 / math.sqrt(type_of(q).shape[-1])
    out, _ = bind("dot_product_attention", q, k, v, *extra, scale=float(scale),
                  is_causal=bool(is_causal), has_bias=bias is not None,
                  has_mask=mask is not None)
    return out
