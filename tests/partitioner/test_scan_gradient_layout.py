"""A scan's weight gradients take the weights' FSDP layout (issue 18): the backward scan
reduce-scatters each layer's gradient instead of all-reducing it to a replicated copy.
Numerics against the unsharded run on the numpy reference interpreter; bytes by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, lax
from tests.partitioner.helpers import mesh

L, B, D, F = 3, 64, 16, 32
FSDP = ("data", "model")  # all 8 devices of the 2x4 mesh
F32, F16 = 4, 2


def inputs() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return (
        rng.normal(size=(B, D)).astype(np.float32),
        (rng.normal(size=(L, D, F)) / 4).astype(np.float32),
        (rng.normal(size=(L, F, D)) / 4).astype(np.float32),
    )


def put(x: np.ndarray, *spec: Any) -> spmd.Array:
    return spmd.device_put(x, NamedSharding(mesh("2x4"), P(*spec)))


def reference(fn: Any, args: tuple[np.ndarray, ...], monkeypatch: pytest.MonkeyPatch) -> Any:
    """fn's gradients unsharded, each op run by the numpy reference interpreter."""
    with monkeypatch.context() as m:
        m.setenv("SPMD_BACKEND", "interpreter")
        return spmd.jit(fn)(*args)


def stacked_loss(w1: Any, w2: Any, x: Any) -> Any:
    def layer(h: Any, ws: Any) -> Any:
        return h + snp.tanh(h @ ws[0]) @ ws[1], None

    h, _ = lax.scan(spmd.remat(layer), x, (w1, w2))
    return (h**2).mean()


def test_stacked_weight_gradients_are_reduce_scattered_to_the_weights_layout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, w1, w2 = inputs()
    grad = spmd.grad(stacked_loss, argnums=(0, 1))
    want = reference(grad, (w1, w2, x), monkeypatch)
    args = (put(w1, None, FSDP), put(w2, None, None, FSDP), put(x, FSDP))
    compiled = spmd.jit(grad).lower(*args).compile()
    got = compiled(*args)
    for g, w, a in zip(got, want, args[:2]):
        assert g.sharding.spec == a.sharding.spec  # sharded like its weight, not replicated
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=2e-5, atol=2e-6)
    # Per layer each device holds the whole [16, 32] f32 partial gradient of w1 (and
    # [32, 16] of w2): 2048 B in, its 1/8 out; on a ring each sends 2048 * 7/8 = 1792 B
    # (an all-reduce of the same buffer sends twice that, 3584 B).
    grads = [r for r in compiled.collectives() if r.kind not in ("all_gather",)]
    assert sorted((r.kind, r.axes, r.bytes, r.shape, r.moved) for r in grads) == [
        ("reduce_scatter", FSDP, D * F * F32, (D, F), D * F * F32 * 7 / 8),
        ("reduce_scatter", FSDP, D * F * F32, (F, D), D * F * F32 * 7 / 8),
    ]
    assert all("scan body, x3" in r.reason for r in grads)


def shared_loss(w1: Any, w2: Any, x: Any) -> Any:
    """w1 is a scan constant (its gradient a carried accumulator), compute in float16."""

    def layer(h: Any, w: Any) -> Any:
        return h + snp.tanh(h @ w1.astype("float16")) @ w.astype("float16"), None

    h, _ = lax.scan(layer, x.astype("float16"), w2)
    return (h.astype("float32") ** 2).mean()


def test_a_carried_gradient_accumulator_stays_sharded_and_sums_in_the_compute_dtype(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    x, w1, w2 = inputs()
    w1 = w1[0]
    grad = spmd.grad(shared_loss, argnums=(0, 1))
    want = reference(grad, (w1, w2, x), monkeypatch)
    args = (put(w1, FSDP), put(w2, None, None, FSDP), put(x, FSDP))
    compiled = spmd.jit(grad).lower(*args).compile()
    got = compiled(*args)
    for g, w, a in zip(got, want, args[:2]):
        assert g.sharding.spec == a.sharding.spec
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=5e-3, atol=5e-3)
    # Each layer reduce-scatters the float16 partial gradient of w1 and of its w2 slice:
    # 16 x 32 x 2 B = 1024 B in, 1024 * 7/8 = 896 B sent per device; no all-reduce.
    grads = [r for r in compiled.collectives() if r.kind != "all_gather"]
    assert (
        sorted((r.kind, r.bytes, r.dtype, r.moved) for r in grads)
        == [("reduce_scatter", D * F * F16, "float16", D * F * F16 * 7 / 8)] * 2
    )
