"""spmd.nn.ring_attention (issue 18): sequence-sharded attention in shard_map, key/value
blocks rotating by ppermute, against the unsharded fused op on the numpy reference
interpreter (forward and grads) and the float64 unfused oracle; the lse cotangent of the
fused op; ppermute bytes by hand; the simulator's overlap of the ring with attention."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
import spmd.sim
from spmd import NamedSharding, P
from spmd.tracing import bind
from tests.core.test_attention import unfused

B, T, N, KH, H = 2, 32, 4, 2, 8  # the sequence splits 4 ways: blocks of 8
F32 = 4


def qkv(kv_heads: int = KH, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((B, T, N, H)).astype(np.float32),
        rng.standard_normal((B, T, kv_heads, H)).astype(np.float32),
        rng.standard_normal((B, T, kv_heads, H)).astype(np.float32),
    )


def ring(causal: bool) -> Any:
    mesh = spmd.make_mesh((2, 4), ("data", "seq"))
    return spmd.shard_map(
        lambda q, k, v: spmd.nn.ring_attention(q, k, v, axis_name="seq", is_causal=causal),
        mesh=mesh,
        in_specs=P("data", "seq"),
        out_specs=P("data", "seq"),
    )


def on_interpreter(fn: Any, args: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setenv("SPMD_BACKEND", "interpreter")
        return spmd.jit(fn)(*args)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kv_heads", [KH, N])
def test_ring_attention_matches_the_unsharded_op_forward_and_grads(
    causal: bool, kv_heads: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    args = qkv(kv_heads)
    got = spmd.jit(ring(causal))(*args)
    np.testing.assert_allclose(
        np.asarray(got), unfused(*(a.astype(np.float64) for a in args), causal=causal), atol=2e-5
    )

    def weights(o: Any) -> Any:  # a cotangent that differs per element
        return (o * snp.cos(o)).sum()

    def loss_ring(q: Any, k: Any, v: Any) -> Any:
        return weights(ring(causal)(q, k, v))

    def loss_ref(q: Any, k: Any, v: Any) -> Any:
        return weights(spmd.nn.dot_product_attention(q, k, v, is_causal=causal))

    want = on_interpreter(spmd.grad(loss_ref, argnums=(0, 1, 2)), args, monkeypatch)
    grads = spmd.jit(spmd.grad(loss_ring, argnums=(0, 1, 2)))(*args)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-5)


def test_the_fused_ops_lse_cotangent_matches_the_unfused_composition() -> None:
    # d lse / d scores = the probabilities; checked with a causal MHA case against
    # logsumexp and softmax composed of primitive ops.
    q, k, v = qkv(N)
    rng = np.random.default_rng(3)
    c_out = rng.standard_normal((B, T, N, H)).astype(np.float32)
    c_lse = rng.standard_normal((B, N, T)).astype(np.float32)
    scale = 1 / np.sqrt(H)

    def fused(q: Any, k: Any, v: Any) -> Any:
        out, lse = bind(
            "dot_product_attention",
            q,
            k,
            v,
            scale=scale,
            is_causal=True,
            has_bias=False,
            has_mask=False,
        )
        return (out * c_out).sum() + (lse * c_lse).sum()

    def composed(q: Any, k: Any, v: Any) -> Any:
        s = snp.einsum("btnh,bsnh->bnts", q, k) * scale
        s = snp.where(snp.tril(snp.ones((T, T), "bool")), s, -1e30)
        out = snp.einsum("bnts,bsnh->btnh", spmd.nn.softmax(s, axis=-1), v)
        return (out * c_out).sum() + (spmd.nn.logsumexp(s, axis=-1) * c_lse).sum()

    got = spmd.jit(spmd.grad(fused, argnums=(0, 1, 2)))(q, k, v)
    want = spmd.jit(spmd.grad(composed, argnums=(0, 1, 2)))(q, k, v)
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-4, atol=1e-4)


def test_collective_report_lists_each_hop_with_its_block_bytes() -> None:
    # A device holds [B/2, T/4, KH, H] f32 of key and of value: 1 x 8 x 2 x 8 x 4 = 512 B.
    # Forward: 3 hops (n - 1 on a ring of 4, none back home), key and value each.
    block = (B // 2) * (T // 4) * KH * H * F32
    q, k, v = qkv()
    records = spmd.jit(ring(True)).lower(q, k, v).compile().collectives()
    assert sorted((r.kind, r.axes, r.bytes, r.reason) for r in records) == sorted(
        ("collective_permute", ("seq",), block, f"ring attention: key/value blocks, hop {h} of 3")
        for h in (1, 2, 3)
        for _ in "kv"
    )
    # Backward: the key/value gradients travel the ring the other way, 3 hops each.
    grad = spmd.jit(spmd.grad(lambda q, k, v: ring(True)(q, k, v).sum(), argnums=(0, 1, 2)))
    back = [
        r
        for r in grad.lower(q, k, v).compile().collectives()
        if r.reason.startswith("backward of ring attention")
    ]
    assert sorted((r.kind, r.bytes) for r in back) == [("collective_permute", block)] * 6


def test_simulator_overlaps_each_hop_with_the_previous_blocks_attention() -> None:
    # v5e-16, sequence 16 x 8192 split on 'seq': per step each device attends 8192 queries
    # to 8192 keys (4 T S N H flops: 4 x 8192^2 x 8 x 128 = 275 GFLOP, ~1.5 ms) while the
    # next [8192, 8, 128] bf16 key and value blocks (16 MiB each, ~0.5 ms) move one hop.
    # (Blocks under ~5000 tokens are link-bound on v5e: flops per byte moved = the block.)
    n, tb, heads, hd = 16, 8192, 8, 128
    mesh = spmd.make_mesh((n,), ("seq",), device="tpu-sim:v5e")
    x = spmd.ShapeDtypeStruct(
        (1, n * tb, heads, hd), "bfloat16", NamedSharding(mesh, P(None, "seq"))
    )
    f = spmd.jit(
        spmd.shard_map(
            lambda q, k, v: spmd.nn.ring_attention(q, k, v, axis_name="seq"),
            mesh=mesh,
            in_specs=P(None, "seq"),
            out_specs=P(None, "seq"),
        )
    )
    hidden = spmd.sim.simulate(f, x, x, x, check_memory=False)
    exposed = spmd.sim.simulate(f, x, x, x, check_memory=False, overlap=False)
    hops = [r for r in hidden.collectives() if r.op == "collective_permute"]
    assert sum(r.count for r in hops) == 2 * (n - 1)
    assert {r.bytes for r in hops} == {tb * heads * hd * 2}
    attention = [r for r in hidden.ops if r.op == "dot_product_attention"]
    assert sum(r.flops * r.count for r in attention) == n * 4 * tb * tb * heads * hd
    assert exposed.step_time_s == pytest.approx(
        exposed.compute_time_s + exposed.collective_time_s, rel=1e-6
    )
    assert hidden.exposed_collective_s < 0.5 * hidden.collective_time_s
    assert hidden.step_time_s < exposed.step_time_s
