"""An FSDP decoder whose weights outweigh its activations (issue 18: MaxText 1B's 2 layers
on 4 chips): the unembedding weight is gathered and the logits stay batch-sharded. Before,
propagation let the bigger weight's sharded input dim win, so the scan's carry was moved to
the embed dim and the [B, S, V] logits were summed onto every device by an all-reduce.
Numerics against the unsharded run on the numpy reference interpreter; bytes by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, lax
from tests.partitioner.helpers import mesh

# carry : stacked weight : unembedding : logits = 1 : 2 : 4 : 8 elements, as in the 1B run
L, B, S, D, V = 4, 8, 8, 32, 256
N, F32 = 8, 4  # devices on 'data', bytes per float32


def inputs() -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(0)
    return (
        (rng.normal(size=(L, D, D)) / 8).astype(np.float32),
        (rng.normal(size=(D, V)) / 8).astype(np.float32),
        rng.normal(size=(B, S, D)).astype(np.float32),
    )


def loss(w: Any, u: Any, x: Any) -> Any:
    def layer(h: Any, wl: Any) -> Any:
        return h + snp.tanh(h @ wl), None

    h, _ = lax.scan(layer, x, w)
    logits = snp.einsum("bsd,dv->bsv", h, u)
    return (spmd.nn.logsumexp(logits, axis=-1) - logits[..., 0]).mean()


def step(w: Any, u: Any, x: Any) -> Any:
    value, (gw, gu) = spmd.value_and_grad(loss, argnums=(0, 1))(w, u, x)
    return value, w - 0.1 * gw, u - 0.1 * gu


def placed() -> tuple[spmd.Array, ...]:
    w, u, x = inputs()
    m = mesh("8")
    return (
        spmd.device_put(w, NamedSharding(m, P(None, "data"))),
        spmd.device_put(u, NamedSharding(m, P("data"))),
        spmd.device_put(x, NamedSharding(m, P("data"))),
    )


def reference(fn: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as m:
        m.setenv("SPMD_BACKEND", "interpreter")
        return spmd.jit(fn)(*inputs())


def records(compiled: Any) -> list[tuple[str, tuple[int, ...], float]]:
    return sorted((r.kind, r.shape, r.moved) for r in compiled.collectives())


# Per device, on a ring of N: an all-gather of a local shard of b bytes sends b (N-1); a
# reduce-scatter of b bytes sends b (N-1)/N; an all-reduce twice that.
LAYER_GATHER = ("all_gather", (D // N, D), D * D * F32 / N * (N - 1))  # once per layer
UNEMBED_GATHER = ("all_gather", (D // N, V), D * V * F32 / N * (N - 1))
LOSS_SUM = ("all_reduce", (), F32 * 2 * (N - 1) / N)


def test_forward_gathers_the_unembedding_not_the_activations(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = placed()
    compiled = spmd.jit(loss).lower(*args).compile()
    np.testing.assert_allclose(
        np.asarray(compiled(*args)), np.asarray(reference(loss, monkeypatch)), rtol=1e-5
    )
    # The scan carry stays batch-sharded (no all-to-all to the embed dim); the [D, V]
    # weight (32 KiB) is gathered once, the [B, S, V] logits (64 KiB) never move.
    assert records(compiled) == sorted([LAYER_GATHER, UNEMBED_GATHER, LOSS_SUM])


def test_train_step_keeps_logits_batch_sharded(monkeypatch: pytest.MonkeyPatch) -> None:
    args = placed()
    compiled = spmd.jit(step).lower(*args).compile()
    got = compiled(*args)
    want = reference(step, monkeypatch)
    for g, r, a in zip(got, want, (None, *args[:2])):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-5, atol=2e-6)
        if a is not None:
            assert g.sharding.spec == a.sharding.spec
    # Forward as above; the backward reuses the gathered weight for dL/dh, gathers each
    # layer's weight again and reduce-scatters its gradient, and reduce-scatters dL/du.
    assert records(compiled) == sorted(
        [
            LAYER_GATHER,
            UNEMBED_GATHER,
            LOSS_SUM,
            LAYER_GATHER,
            ("reduce_scatter", (D, D), D * D * F32 * (N - 1) / N),
            ("reduce_scatter", (D, V), D * V * F32 * (N - 1) / N),
        ]
    )
    # Per device the logits (and their cotangent) are the local batch only: B/N rows.
    program = compiled.as_text()
    assert f"tensor<{B // N}x{S}x{V}x" in program
    assert f"tensor<{B}x{S}x{V}x" not in program
