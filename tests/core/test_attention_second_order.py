"""Second-order derivatives of fused attention (the backward op's VJP, built from primitive
builders in spmd/ops/attention.py) with a broadcast bias and mask, grouped heads, a causal
mask and no batch dims, against the same attention composed of spmd.numpy in user code."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import nn

LARGE_NEG = -0.7 * float(np.finfo(np.float32).max)


def composed(q, k, v, bias, mask, causal):
    """Attention in spmd.numpy: [*b,T,N,H] x [*b,S,K,H], heads grouped as JAX's GQA."""
    n, kh, h = q.shape[-2], k.shape[-2], q.shape[-1]
    kk, vv = snp.repeat(k, n // kh, axis=-2), snp.repeat(v, n // kh, axis=-2)
    s = snp.einsum("...tnh,...snh->...nts", q, kk) / np.sqrt(h) + bias
    keep = mask
    if causal:
        keep = snp.logical_and(keep, np.tril(np.ones((q.shape[-3], k.shape[-3]), bool)))
    s = snp.where(keep, s, LARGE_NEG)
    return snp.einsum("...nts,...snh->...tnh", nn.softmax(s, axis=-1), vv)


def second_order(fn, mask):
    """Grads of the sum of squared first-order grads (of q, k, v and bias)."""

    def loss(q, k, v, bias):
        return (fn(q, k, v, bias, mask) ** 2).sum()

    inner = spmd.grad(loss, argnums=(0, 1, 2, 3))
    return spmd.grad(
        lambda q, k, v, b: sum((g**2).sum() for g in inner(q, k, v, b)), argnums=(0, 1, 2, 3)
    )


CASES = [  # batch dims, T, S, N, K, H, causal
    ((2,), 5, 7, 4, 2, 3, True),
    ((), 6, 6, 2, 1, 4, False),
]


@pytest.mark.parametrize("case", CASES)
def test_second_order_grads_with_bias_and_mask_equal_the_composition(case):
    batch, t, s, n, kh, h, causal = case
    rng = np.random.default_rng(3)
    q = rng.standard_normal((*batch, t, n, h)).astype(np.float32)
    k = rng.standard_normal((*batch, s, kh, h)).astype(np.float32)
    v = rng.standard_normal((*batch, s, kh, h)).astype(np.float32)
    bias = rng.standard_normal((*(1,) * len(batch), n, t, s)).astype(np.float32)
    mask = rng.random((*batch, 1, t, s)) > 0.3
    mask[..., 0, 0, :] = True  # row 0 keeps its causal key

    def fused(q, k, v, b, m):
        return nn.dot_product_attention(q, k, v, b, m, is_causal=causal)

    def plain(q, k, v, b, m):
        return composed(q, k, v, b, m, causal)

    got = second_order(fused, mask)(q, k, v, bias)
    want = second_order(plain, mask)(q, k, v, bias)
    for a, b in zip(got, want):
        largest = np.abs(np.asarray(b)).max()
        assert largest > 0
        # float32 rounding of sums of terms up to `largest` (a masked entry's exact 0 included)
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6 * largest)
