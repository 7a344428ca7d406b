"""spmd.vmap against the per-example loop (the oracle: f on each example, stacked), for every
batching rule and the per-example fallback, under jit, grad and on sharded arrays."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, lax
from spmd.errors import ShapeError

RNG = np.random.default_rng(0)
W = RNG.standard_normal((4, 3)).astype(np.float32)


def loop(f, *args, in_axes=0):
    axes = in_axes if isinstance(in_axes, tuple) else (in_axes,) * len(args)
    n = next(np.shape(a)[ax] for a, ax in zip(args, axes) if ax is not None)
    rows = [
        f(*[a if ax is None else np.take(a, i, axis=ax) for a, ax in zip(args, axes)])
        for i in range(n)
    ]
    return np.stack([np.asarray(r) for r in rows])


CASES = {
    "elementwise": lambda v: snp.tanh(v) * 2 + 1,
    "broadcast": lambda v: v[:, None] * snp.ones((4, 2)),
    "reshape_transpose": lambda v: snp.reshape(v, (2, 2)).T,
    "reduce": lambda v: snp.sum(v * v) + snp.max(v),
    "argmax_cumsum": lambda v: snp.cumsum(v) + snp.argmax(v),
    "flip_slice": lambda v: snp.flip(v)[1:3],
    "dot_lhs_batched": lambda v: snp.dot(v, W),
    "dot_rhs_batched": lambda v: snp.dot(W.T, v),
    "dot_both_batched": lambda v: snp.dot(v, v) * snp.outer(v, v),
    "concat_where_pad": lambda v: snp.concatenate([snp.where(v > 0, v, 0.0), snp.ones(2)]),
    "pad": lambda v: lax.pad(v, 0.0, [(1, 2, 1)]),
    "gather_both_batched": lambda v: v[snp.argmax(v)] + snp.take(v, snp.array([3, 0])),
    "gather_batched_x": lambda v: snp.take(v, snp.array([[3, 0], [1, 1]])) * 2,
    "gather_batched_index": lambda v: snp.take(W, snp.argmax(v) % 4, axis=0),
    "gather_batched_index_axis1": lambda v: snp.take(W, snp.argsort(v)[:2], axis=1),
    "scan_fallback": lambda v: lax.scan(lambda c, x: (c + x, c * x), 0.0, v)[1],
    "cond_fallback": lambda v: lax.cond(v[0] > 0, lambda u: u * 2, lambda u: -u, v),
    "sort_argsort": lambda v: snp.sort(v) + snp.argsort(v),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_matches_the_per_example_loop(name):
    f = CASES[name]
    xs = RNG.standard_normal((5, 4)).astype(np.float32)
    want = loop(f, xs)
    np.testing.assert_allclose(np.asarray(spmd.vmap(f)(xs)), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(spmd.jit(spmd.vmap(f))(xs)), want, rtol=1e-5, atol=1e-6)


def test_in_axes_out_axes_and_unmapped_arguments():
    a = RNG.standard_normal((3, 5)).astype(np.float32)
    b = RNG.standard_normal(3).astype(np.float32)
    got = spmd.vmap(lambda u, v: u * v, in_axes=(1, None), out_axes=1)(a, b)
    np.testing.assert_allclose(np.asarray(got), a * b[:, None], rtol=1e-6)
    tree = spmd.vmap(lambda d: {"s": d["x"] + d["y"], "c": 2.0}, in_axes=({"x": 0, "y": None},))(
        {"x": a, "y": b[0]}
    )
    np.testing.assert_allclose(np.asarray(tree["s"]), a + b[0], rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(tree["c"]), np.full(3, 2.0))  # broadcast out
    const = spmd.vmap(lambda u: snp.ones(2), in_axes=None, axis_size=4)(a)
    assert const.shape == (4, 2)
    nested = spmd.vmap(spmd.vmap(lambda u, v: u * v))(a, a)
    np.testing.assert_allclose(np.asarray(nested), a * a, rtol=1e-6)


def test_vmap_of_grad_and_grad_of_vmap_agree_with_the_loop():
    xs = RNG.standard_normal((6, 4)).astype(np.float32)

    def loss(w, x):
        return snp.sum(snp.tanh(x @ w))

    per = spmd.vmap(spmd.grad(loss), in_axes=(None, 0))(W, xs)
    want = loop(lambda x: spmd.grad(loss)(W, x), xs)
    np.testing.assert_allclose(np.asarray(per), want, rtol=1e-5, atol=1e-6)
    total = spmd.jit(spmd.grad(lambda w: spmd.vmap(lambda x: loss(w, x))(xs).sum()))(W)
    np.testing.assert_allclose(np.asarray(total), want.sum(0), rtol=1e-4, atol=1e-5)


def test_vmap_keeps_a_sharded_batch_sharded():
    mesh = spmd.make_mesh((8,), ("d",))
    xs = RNG.standard_normal((16, 4)).astype(np.float32)
    placed = spmd.device_put(xs, NamedSharding(mesh, P("d")))
    out = spmd.vmap(lambda v: snp.tanh(snp.dot(v, W)))(placed)
    np.testing.assert_allclose(np.asarray(out), np.tanh(xs @ W), rtol=1e-5, atol=1e-6)
    assert out.sharding.spec == P("d")
    jitted = spmd.jit(spmd.vmap(lambda v: snp.dot(v, W)))(placed)
    assert jitted.sharding.spec[0] == "d"


def test_bad_axes_are_clear_errors():
    a = np.ones((3, 4))
    with pytest.raises(ShapeError, match="different sizes"):
        spmd.vmap(lambda u, v: u + v)(a, np.ones((2, 4)))
    with pytest.raises(ShapeError, match="out of range"):
        spmd.vmap(lambda u: u, in_axes=2)(a)
    with pytest.raises(ShapeError, match="no mapped argument"):
        spmd.vmap(lambda u: u, in_axes=None)(a)
    with pytest.raises(ShapeError, match="entries"):
        spmd.vmap(lambda u, v: u, in_axes=(0,))(a, a)
    with pytest.raises(ShapeError, match="out_axes=None"):
        spmd.vmap(lambda u: u, out_axes=None)(a)
    with pytest.raises(spmd.errors.SpmdError):
        spmd.vmap(3)


def test_collectives_over_the_vmapped_axis():
    xs = RNG.standard_normal((3, 4)).astype(np.float32)
    norm = spmd.vmap(lambda v: v / lax.psum(v, "b"), axis_name="b")
    np.testing.assert_allclose(np.asarray(norm(xs)), xs / xs.sum(0), rtol=1e-5)
    np.testing.assert_allclose(np.asarray(spmd.jit(norm)(xs)), xs / xs.sum(0), rtol=1e-5)
    centred = spmd.vmap(lambda v: v - lax.pmean(v, "b"), axis_name="b")(xs)
    np.testing.assert_allclose(np.asarray(centred), xs - xs.mean(0), rtol=1e-5, atol=1e-6)
    top = spmd.vmap(lambda v: lax.pmax(v, "b"), axis_name="b")(xs)
    np.testing.assert_array_equal(np.asarray(top), np.broadcast_to(xs.max(0), xs.shape))
    where = spmd.vmap(lambda v: lax.axis_index("b") + 0 * v.sum().astype("int32"), axis_name="b")(
        xs
    )
    np.testing.assert_array_equal(np.asarray(where), [0, 1, 2])
    everyone = spmd.vmap(lambda v: lax.all_gather(v, "b"), axis_name="b")(xs)
    np.testing.assert_array_equal(np.asarray(everyone), np.broadcast_to(xs, (3, 3, 4)))
    grads = spmd.grad(lambda w: spmd.vmap(lambda v: lax.psum(v * w, "b"), axis_name="b")(xs).sum())(
        np.float32(2.0)
    )
    np.testing.assert_allclose(float(grads), 3 * xs.sum(), rtol=1e-5)
    with pytest.raises(ShapeError, match="not supported"):
        spmd.vmap(lambda v: lax.ppermute(v, "b", [(0, 1)]), axis_name="b")(xs)
