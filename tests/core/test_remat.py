"""spmd.remat (jax.checkpoint): gradients equal the un-rematerialised ones for every policy
(eagerly, under jit, inside scan), the backward recomputes what the policy does not save
(dot counts, stacked residuals), and the simulator counts the recomputed FLOPs and the
smaller saved activations."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
import spmd.sim
from spmd import lax
from spmd.errors import SpmdError

POLICIES = [
    None,
    spmd.checkpoint_policies.nothing_saveable,
    spmd.checkpoint_policies.everything_saveable,
    spmd.checkpoint_policies.dots_saveable,
    spmd.checkpoint_policies.dots_with_no_batch_dims_saveable,
    spmd.checkpoint_policies.save_only_these_names("h"),
    spmd.checkpoint_policies.save_any_names_but_these("h"),
]


def block(x, w):
    h = spmd.checkpoint_name(snp.tanh(x @ w), "h")
    return snp.sum(snp.tanh(h @ w) ** 2)


def data(seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((3, 4)).astype(np.float32),
        rng.standard_normal((4, 4)).astype(np.float32),
    )


def _close(got, want):
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", POLICIES, ids=repr)
def test_grads_equal_no_remat_eagerly_and_under_jit(policy):
    x, w = data()
    want = spmd.grad(block, argnums=(0, 1))(x, w)
    remat = spmd.remat(block, policy=policy)
    _close(spmd.grad(remat, argnums=(0, 1))(x, w), want)
    _close(spmd.jit(spmd.grad(remat, argnums=(0, 1)))(x, w), want)
    value, grads = spmd.jit(spmd.value_and_grad(remat, argnums=(0, 1)))(x, w)
    assert float(value) == pytest.approx(float(block(x, w)), rel=1e-6)
    _close(grads, want)


def _dots(policy, use=True):
    x, w = data()
    fn = spmd.remat(block, policy=policy) if use else block
    graph = spmd.jit(spmd.value_and_grad(fn, argnums=(0, 1))).lower(x, w).graph
    assert not any(op.name in ("remat", "checkpoint_name") for op in graph.walk())
    return sum(op.name == "dot_general" for op in graph.ops)


def test_backward_recomputes_what_the_policy_does_not_save():
    plain = _dots(None, use=False)  # 2 forward + 4 backward
    assert plain == 6
    assert _dots(spmd.checkpoint_policies.nothing_saveable) == plain + 2
    assert _dots(spmd.checkpoint_policies.dots_saveable) == plain
    assert _dots(spmd.checkpoint_policies.everything_saveable) == plain
    # h saved: only x @ w's producer of h is not needed again; h @ w is recomputed
    assert _dots(spmd.checkpoint_policies.save_only_these_names("h")) == plain + 1


def layer(x, w):
    h = snp.tanh(x @ w["a"])
    return x + snp.tanh(h @ w["b"]), None


def stack_loss(policy, use=True):
    body = spmd.remat(layer, policy=policy) if use else layer

    def loss(p, x):
        y, _ = lax.scan(body, x, p)
        return (y**2).mean()

    return loss


def stack(seed=0, layers=3, batch=8, width=16):
    rng = np.random.default_rng(seed)
    p = {n: (rng.standard_normal((layers, width, width)) * 0.3).astype(np.float32) for n in "ab"}
    return p, rng.standard_normal((batch, width)).astype(np.float32)


def _forward_scan(graph):
    return next(op for op in graph.ops if op.name == "scan")


@pytest.mark.parametrize(
    "policy,stacked",
    [(spmd.checkpoint_policies.nothing_saveable, 1), (spmd.checkpoint_policies.dots_saveable, 3)],
)
def test_remat_inside_scan_matches_and_stacks_fewer_residuals(policy, stacked):
    p, x = stack()
    want = spmd.jit(spmd.value_and_grad(stack_loss(None, use=False)))(p, x)
    f = spmd.jit(spmd.value_and_grad(stack_loss(policy)))
    got = f(p, x)
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-6)
    for name in "ab":
        np.testing.assert_allclose(
            np.asarray(got[1][name]), np.asarray(want[1][name]), rtol=1e-5, atol=1e-6
        )
    scan = _forward_scan(f.lower(p, x).graph)
    assert len(scan.outputs) == 1 + stacked  # the carry, then what each step saves


def test_simulator_counts_recomputed_flops_and_smaller_activations():
    big = {n: spmd.ShapeDtypeStruct((8, 1024, 1024), "bfloat16") for n in "ab"}
    x = spmd.ShapeDtypeStruct((4096, 1024), "bfloat16")
    plain = spmd.sim.simulate(
        spmd.value_and_grad(stack_loss(None, use=False)), big, x, chip="v5e", check_memory=False
    )
    remat = spmd.sim.simulate(
        spmd.value_and_grad(stack_loss(None)), big, x, chip="v5e", check_memory=False
    )
    matmul = 2 * 4096 * 1024 * 1024 * 2 * 8  # forward dots of the stack
    assert plain.flops == pytest.approx(3 * matmul, rel=0.02)
    assert remat.flops == pytest.approx(4 * matmul, rel=0.02)  # the forward once more
    # saved per layer: [4096, 1024] bf16 carry only, instead of also h and tanh(h @ b)
    saved = 8 * 4096 * 1024 * 2
    assert plain.peak_memory_bytes - remat.peak_memory_bytes >= saved


def test_bad_policy_is_an_spmd_error():
    with pytest.raises(SpmdError, match="checkpoint_policies"):
        spmd.remat(block, policy="dots")


def test_static_argnums_and_checkpoint_name_are_transparent():
    x, w = data()

    def scaled(x, w, k):
        return block(x * k, w)

    got = spmd.grad(spmd.remat(scaled, static_argnums=(2,)))(x, w, 2)
    _close([got], [spmd.grad(scaled)(x, w, 2)])
    np.testing.assert_array_equal(np.asarray(spmd.checkpoint_name(x, "x")), x)


def test_remat_on_a_sharded_mesh_matches_and_keeps_its_recomputation():
    from spmd.sharding import NamedSharding, P

    p, x = stack(batch=8, width=16)
    mesh = spmd.make_mesh((2, 2), ("data", "model"))
    ps = {n: spmd.device_put(w, NamedSharding(mesh, P(None, None, "model"))) for n, w in p.items()}
    xs = spmd.device_put(x, NamedSharding(mesh, P("data")))
    want = spmd.jit(spmd.value_and_grad(stack_loss(None, use=False)))(p, x)
    f = spmd.jit(spmd.value_and_grad(stack_loss(spmd.checkpoint_policies.nothing_saveable)))
    got = f(ps, xs)
    assert float(got[0]) == pytest.approx(float(want[0]), rel=1e-5)
    for name in "ab":
        np.testing.assert_allclose(
            np.asarray(got[1][name]), np.asarray(want[1][name]), rtol=1e-5, atol=1e-6
        )
    program = f.lower(ps, xs).compile().executable.partitioned.program
    scans = [op for op in program.ops if op.name == "scan"]
    backward = scans[-1].attrs["body"]
    assert sum(op.name == "dot_general" for op in backward.walk()) == 6  # 2 recomputed + 4
