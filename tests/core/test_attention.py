"""spmd.nn.dot_product_attention: the fused op against an unfused float64 numpy oracle
(forward, lse, backward by finite differences), the CPU backend's tiled kernel against the
op's reference, grads under jit against the unfused composition, batch/heads sharding
without collectives, and the simulator's FLOPs and HBM bytes."""

from __future__ import annotations

import numpy as np
import pytest

import backends.cpu.attention as tiled
import spmd
import spmd.numpy as snp
from spmd import nn
from spmd.errors import ShapeError
from spmd.ir.graph import Op
from spmd.ops import REGISTRY
from spmd.sharding import NamedSharding, P

LARGE_NEG = -0.7 * float(np.finfo(np.float32).max)


def unfused(q, k, v, bias=None, mask=None, causal=False):
    """float64 oracle: [B,T,N,H] x [B,S,K,H], heads grouped as JAX's GQA."""
    _, t, n, h = q.shape
    s_len, kh = k.shape[1], k.shape[2]
    kk, vv = np.repeat(k, n // kh, axis=2), np.repeat(v, n // kh, axis=2)
    s = np.einsum("btnh,bsnh->bnts", q, kk) / np.sqrt(h)
    if bias is not None:
        s = s + bias
    keep = np.ones((t, s_len), bool)
    if causal:
        keep = np.tril(keep)
    if mask is not None:
        keep = keep & mask
    s = np.where(keep, s, LARGE_NEG)
    p = np.exp(s - s.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.einsum("bnts,bsnh->btnh", p, vv)


CASES = [  # B, T, S, N, K, H, causal, bias, mask
    (2, 50, 70, 4, 2, 8, True, True, True),
    (1, 40, 40, 4, 4, 16, False, False, False),
    (2, 33, 33, 6, 2, 8, True, False, True),
    (1, 20, 45, 2, 1, 4, False, True, False),
]


def make(case, seed=0):
    b, t, s, n, kh, h, causal, has_bias, has_mask = case
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, t, n, h)).astype(np.float32)
    k = rng.standard_normal((b, s, kh, h)).astype(np.float32)
    v = rng.standard_normal((b, s, kh, h)).astype(np.float32)
    bias = rng.standard_normal((1, n, t, s)).astype(np.float32) if has_bias else None
    mask = None
    if has_mask:
        mask = rng.random((b, 1, t, s)) > 0.3
        mask[0, 0, 3, :] = False  # a fully masked row: JAX averages v over all keys
    attrs = {
        "scale": 1 / np.sqrt(h),
        "is_causal": causal,
        "has_bias": has_bias,
        "has_mask": has_mask,
    }
    return q, k, v, bias, mask, attrs


@pytest.mark.parametrize("case", CASES)
def test_reference_and_tiled_kernel_match_the_unfused_oracle(case, monkeypatch):
    monkeypatch.setattr(tiled, "BLOCK_Q", 16)
    monkeypatch.setattr(tiled, "BLOCK_K", 32)
    q, k, v, bias, mask, attrs = make(case)
    extra = [x for x in (bias, mask) if x is not None]
    want = unfused(q.astype(np.float64), k, v, bias, mask, attrs["is_causal"])
    out, lse = REGISTRY["dot_product_attention"].reference(q, k, v, *extra, **attrs)
    np.testing.assert_allclose(out, want, atol=2e-5)
    op = Op("dot_product_attention", (), (), (), attrs, "")
    out2, lse2 = tiled.run_native(op, [q, k, v, *extra])
    np.testing.assert_allclose(out2, want, atol=2e-5)
    np.testing.assert_allclose(lse2, lse, atol=2e-5)
    d_out = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
    ref = REGISTRY["dot_product_attention_bwd"].reference(q, k, v, out, lse, d_out, *extra, **attrs)
    bwd = Op("dot_product_attention_bwd", (), (), (), attrs, "")
    got = tiled.run_native(bwd, [q, k, v, out, lse, d_out, *extra])
    assert len(got) == len(ref) == 3 + (bias is not None)
    for a, b in zip(got, ref):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, atol=5e-5)


@pytest.mark.parametrize("case", CASES[:2])
def test_backward_reference_matches_finite_differences(case):
    q, k, v, bias, mask, attrs = make(case)
    extra = [x for x in (bias, mask) if x is not None]
    out, lse = REGISTRY["dot_product_attention"].reference(q, k, v, *extra, **attrs)
    d_out = np.random.default_rng(2).standard_normal(out.shape)
    grads = REGISTRY["dot_product_attention_bwd"].reference(
        q, k, v, out, lse, d_out.astype(np.float32), *extra, **attrs
    )
    primals = [q, k, v] + ([bias] if bias is not None else [])
    rng = np.random.default_rng(3)
    eps = 1e-4
    for i, x in enumerate(primals):
        for _ in range(3):
            at = tuple(int(rng.integers(0, d)) for d in x.shape)
            plus = [p.astype(np.float64) for p in primals]
            minus = [p.astype(np.float64) for p in primals]
            plus[i][at] += eps
            minus[i][at] -= eps

            def loss(args):
                b = args[3] if bias is not None else None
                return float((unfused(*args[:3], b, mask, attrs["is_causal"]) * d_out).sum())

            fd = (loss(plus) - loss(minus)) / (2 * eps)
            assert abs(fd - grads[i][at]) < 1e-3 * max(1.0, abs(fd))


def _unfused_spmd(q, k, v, causal):
    n, kh, h = q.shape[2], k.shape[2], q.shape[3]
    kk, vv = snp.repeat(k, n // kh, axis=2), snp.repeat(v, n // kh, axis=2)
    s = snp.einsum("btnh,bsnh->bnts", q, kk) / np.sqrt(h)
    if causal:
        s = snp.where(np.tril(np.ones((q.shape[1], k.shape[1]), bool)), s, LARGE_NEG)
    return snp.einsum("bnts,bsnh->btnh", nn.softmax(s, axis=-1), vv)


def _loss(fn):
    return lambda q, k, v: (fn(q, k, v) ** 2).sum()


def test_grads_under_jit_equal_the_unfused_composition_and_no_scores_are_stored():
    q, k, v, _, _, _ = make((2, 24, 24, 4, 2, 8, True, False, False))
    fused = spmd.jit(
        spmd.grad(
            _loss(lambda q, k, v: nn.dot_product_attention(q, k, v, is_causal=True)),
            argnums=(0, 1, 2),
        )
    )
    plain = spmd.jit(
        spmd.grad(_loss(lambda q, k, v: _unfused_spmd(q, k, v, True)), argnums=(0, 1, 2))
    )
    for a, b in zip(fused(q, k, v), plain(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    graph = fused.lower(q, k, v).graph
    assert {op.name for op in graph.ops} >= {"dot_product_attention", "dot_product_attention_bwd"}
    s_by_s = [t for op in graph.ops for t in op.types if t.shape[-2:] == (24, 24)]
    assert s_by_s == []


def test_batch_and_heads_sharding_needs_no_collectives():
    q, k, v, _, _, _ = make((2, 16, 16, 4, 2, 8, True, False, False))
    mesh = spmd.make_mesh((2, 2), ("data", "model"))
    sharding = NamedSharding(mesh, P("data", None, "model"))
    args = [spmd.device_put(x, sharding) for x in (q, k, v)]
    f = spmd.jit(
        spmd.grad(
            _loss(lambda q, k, v: nn.dot_product_attention(q, k, v, is_causal=True)),
            argnums=(0, 1, 2),
        )
    )
    want = spmd.jit(
        spmd.grad(_loss(lambda q, k, v: _unfused_spmd(q, k, v, True)), argnums=(0, 1, 2))
    )(q, k, v)
    for a, b in zip(f(*args), want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
    assert f.lower(*args).compile().collectives() == []


def test_three_dim_inputs_bias_and_mask_broadcast():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((6, 2, 4)).astype(np.float32)
    bias = rng.standard_normal((6, 6)).astype(np.float32)
    mask = rng.random((6, 6)) > 0.2
    got = np.asarray(
        spmd.jit(lambda q, b, m: nn.dot_product_attention(q, q, q, b, m))(q, bias, mask)
    )
    want = unfused(q[None].astype(np.float64), q[None], q[None], bias, mask)[0]
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_bad_head_counts_raise_a_shape_error():
    q = np.ones((1, 4, 3, 8), np.float32)
    k = np.ones((1, 4, 2, 8), np.float32)
    with pytest.raises(ShapeError, match="multiple of key/value heads"):
        nn.dot_product_attention(q, k, k)


def test_simulator_charges_matmul_flops_and_only_qkvo_bytes():
    import spmd.sim

    b, t, n, h = 4, 4096, 16, 128
    x = spmd.ShapeDtypeStruct((b, t, n, h), "bfloat16")
    report = spmd.sim.simulate(
        lambda q, k, v: nn.dot_product_attention(q, k, v, is_causal=True), x, x, x, chip="v5e"
    )
    row = next(r for r in report.ops if r.op == "dot_product_attention")
    assert row.flops == pytest.approx(2.0 * b * n * (t * (t + 1) / 2) * 2 * h)
    qkvo = 4 * b * t * n * h * 2
    assert row.bytes == qkvo + b * n * t * 4  # and lse, float32
    assert report.peak_memory_bytes < 2 * qkvo  # no [T, S] scores anywhere


def test_second_order_grads_equal_the_unfused_composition():
    q, k, v, _, _, _ = make((1, 6, 6, 2, 1, 4, True, False, False))

    def outer(fn):
        inner = spmd.grad(_loss(fn), argnums=(0, 1, 2))
        return spmd.grad(
            lambda q, k, v: sum((g**2).sum() for g in inner(q, k, v)), argnums=(0, 1, 2)
        )

    fused = outer(lambda q, k, v: nn.dot_product_attention(q, k, v, is_causal=True))
    plain = outer(lambda q, k, v: _unfused_spmd(q, k, v, True))
    for a, b in zip(fused(q, k, v), plain(q, k, v)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
