"""scan_merge: under grad a scan runs forward once (its VJP's residual scan is folded into
it), results match the unmerged graph and finite differences, and scans that compute
different things stay apart."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import spmd
from spmd import control, lax
from spmd.api import JitFunction
from spmd.interpreter import evaluate
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ir.verifier import verify
from spmd.passes import PASSES, optimize
from spmd.passes.scan_merge import canonical, scan_merge

RNG = np.random.default_rng(0)
F32 = np.float32
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(F32)


def trace(fn, *args) -> Graph:
    return JitFunction(fn)._trace(args, {})[0]


def scans(graph: Graph) -> list[Op]:
    return [op for op in graph.ops if op.name == "scan"]


def forward_scans(graph: Graph) -> list[Op]:
    return [op for op in scans(graph) if not op.attrs["reverse"]]


def backward_body(graph: Graph) -> Graph:
    (backward,) = [op for op in scans(graph) if op.attrs["reverse"]]
    return backward.attrs["body"]


def without_scan_merge(graph: Graph) -> Graph:
    return optimize(graph, ("simplify", "constant_fold", "cse", "dce"))


def check_same_results(before: Graph, after: Graph, *args) -> None:
    verify(after)
    for want, got in zip(evaluate(before, args), evaluate(after, args)):
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def finite_difference(loss64, args: list[np.ndarray], wrt: int, eps: float = 1e-6) -> np.ndarray:
    """Central differences of a float64 numpy loss with respect to args[wrt]."""
    x = args[wrt].astype(np.float64)
    out = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[index] += eps
        minus[index] -= eps
        high = loss64(*[plus if i == wrt else a for i, a in enumerate(args)])
        low = loss64(*[minus if i == wrt else a for i, a in enumerate(args)])
        out[index] = (high - low) / (2 * eps)
    return out


# one scan under grad --------------------------------------------------------------------


def rnn_loss(w, xs):
    def body(c, x):
        c2 = lax.tanh(lax.add(lax.mul(c, w), x))
        return c2, lax.mul(c2, c2)

    c, ys = control.scan(body, lax.full((3,), 0.5, "float32"), xs)
    return lax.add(lax.reduce_sum(c, axes=(0,)), lax.reduce_sum(ys, axes=(0, 1)))


def rnn_loss64(w, xs):
    c = np.full(3, 0.5)
    total = 0.0
    for x in xs:
        c = np.tanh(c * w + x)
        total += np.sum(c * c)
    return total + np.sum(c)


def test_grad_of_a_scan_runs_one_forward_scan():
    w, xs = rand(3), rand(5, 3)
    graph = trace(spmd.value_and_grad(rnn_loss), w, xs)
    before = without_scan_merge(graph)
    after = optimize(graph, verify=True)
    assert len(forward_scans(before)) == 2
    assert len(forward_scans(after)) == 1
    assert len(scans(after)) == 2
    check_same_results(before, after, w, xs)
    value, grad = evaluate(after, [w, xs])
    args = [w.astype(np.float64), xs.astype(np.float64)]
    np.testing.assert_allclose(value, rnn_loss64(*args), rtol=1e-5)
    np.testing.assert_allclose(grad, finite_difference(rnn_loss64, args, 0), rtol=1e-4, atol=1e-5)


def test_grad_through_jit_matches_finite_differences_for_every_input():
    w, xs = rand(3), rand(4, 3)
    grads = spmd.jit(spmd.grad(rnn_loss, argnums=(0, 1)))(w, xs)
    args = [w.astype(np.float64), xs.astype(np.float64)]
    for i, got in enumerate(grads):
        np.testing.assert_allclose(
            np.asarray(got), finite_difference(rnn_loss64, args, i), rtol=1e-4, atol=1e-5
        )


def test_a_merge_never_makes_the_loop_compute_ys_nobody_reads():
    def loss(w, xs):
        def body(c, x):
            c2 = lax.tanh(lax.add(lax.mul(c, w), x))
            return c2, lax.exp(lax.sin(c2))

        c, _ = control.scan(body, lax.full((3,), 0.5, "float32"), xs)
        return lax.reduce_sum(c, axes=(0,))

    w, xs = rand(3), rand(5, 3)
    graph = trace(spmd.grad(loss), w, xs)
    after = optimize(graph, verify=True)
    (forward,) = forward_scans(after)
    forward_ops = [op.name for op in forward.attrs["body"].ops]
    assert forward_ops[:3] == ["mul", "add", "tanh"]
    assert not {"sin", "exp", "cos"} & set(forward_ops)  # the unread ys and their VJP
    # the backward step reads the saved 1 - tanh^2 instead of replaying the forward step
    (backward,) = [op for op in scans(after) if op.attrs["reverse"]]
    assert "tanh" not in [op.name for op in backward.attrs["body"].ops]
    check_same_results(without_scan_merge(graph), after, w, xs)


# nested scans ---------------------------------------------------------------------------


def nested_loss(w, xs):
    def inner(c, x):
        return lax.tanh(lax.add(lax.mul(c, w), x)), lax.sin(c)

    def outer(c, row):
        c2, ys = control.scan(inner, c, row)
        return lax.mul(c2, c2), ys

    c, ys = control.scan(outer, lax.full((3,), 0.5, "float32"), xs)
    return lax.add(lax.reduce_sum(c, axes=(0,)), lax.reduce_sum(ys, axes=(0, 1, 2)))


def nested_loss64(w, xs):
    c = np.full(3, 0.5)
    total = 0.0
    for row in xs:
        for x in row:
            total += np.sum(np.sin(c))
            c = np.tanh(c * w + x)
        c = c * c
    return total + np.sum(c)


def test_nested_scans_merge_at_every_level():
    w, xs = rand(3), rand(3, 4, 3)
    graph = trace(spmd.value_and_grad(nested_loss), w, xs)
    before = without_scan_merge(graph)
    after = optimize(graph, verify=True)
    assert len(forward_scans(after)) == 1
    outer_forward = forward_scans(after)[0].attrs["body"]
    assert len(forward_scans(outer_forward)) == 1, "the inner scan and its residual scan"
    assert forward_scans(backward_body(after)) == [], "no forward step replayed backwards"
    check_same_results(before, after, w, xs)
    value, grad = evaluate(after, [w, xs])
    args = [w.astype(np.float64), xs.astype(np.float64)]
    np.testing.assert_allclose(value, nested_loss64(*args), rtol=1e-5)
    np.testing.assert_allclose(
        grad, finite_difference(nested_loss64, args, 0), rtol=1e-4, atol=1e-5
    )


# what must not merge --------------------------------------------------------------------


def two_scans(
    first_xs: int,
    second_xs: int,
    first_w: int = 0,
    second_w: int = 0,
    second_reverse: bool = False,
    second_carry=lax.tanh,
):
    """Two user scans over (w[k], xs[k]); the merge may only fire when all match."""

    def f(w0, w1, xs0, xs1):
        ws, xss = (w0, w1), (xs0, xs1)
        init = lax.full((3,), 0.5, "float32")

        def first(c, x):
            c2 = lax.tanh(lax.add(lax.mul(c, ws[first_w]), x))
            return c2, lax.sin(c2)

        def second(c, x):
            c2 = second_carry(lax.add(lax.mul(c, ws[second_w]), x))
            return c2, lax.cos(c2)

        c_a, ys_a = control.scan(first, init, xss[first_xs])
        c_b, ys_b = control.scan(second, init, xss[second_xs], reverse=second_reverse)
        return c_a, ys_a, c_b, ys_b

    return f


@pytest.mark.parametrize(
    "case, merged",
    [
        ((0, 0), 1),
        ((0, 1), 2),
        ((0, 0, 0, 1), 2),
        ((0, 0, 0, 0, True), 2),
        ((0, 0, 0, 0, False, lax.sin), 2),
    ],
    ids=["same", "other_xs", "other_consts", "other_direction", "other_carry"],
)
def test_user_scans_merge_only_when_operands_direction_and_carries_match(case, merged):
    args = [rand(3), rand(3), rand(5, 3), rand(5, 3)]
    graph = trace(two_scans(*case), *args)
    before = without_scan_merge(graph)
    after = optimize(graph, verify=True)
    assert len(scans(before)) == 2
    assert len(scans(after)) == merged
    check_same_results(before, after, *args)
    if merged == 1:
        assert len(scans(after)[0].outputs) == 3, "one carry, the sin ys and the cos ys"


def test_scans_whose_carry_depends_on_an_impure_op_stay_apart():
    t = TensorType((3,), "float32")
    stacked = TensorType((4, 3), "float32")

    def body() -> Graph:
        c, x, noise, out = fresh_id(), fresh_id(), fresh_id(), fresh_id()
        ops = (
            Op("rng_normal", (), (noise,), (t,), Attrs(shape=(3,))),
            Op("add", (c, noise), (out,), (t,)),
            Op("mul", (out, x), (fresh_id(),), (t,)),
        )
        return Graph((c, x), (t, t), ops, (out, ops[2].outputs[0]))

    init, xs = fresh_id(), fresh_id()
    attrs = {"num_consts": 0, "num_carry": 1, "length": 4, "reverse": False}
    first = Op(
        "scan", (init, xs), (fresh_id(), fresh_id()), (t, stacked), Attrs(body=body(), **attrs)
    )
    second = Op(
        "scan", (init, xs), (fresh_id(), fresh_id()), (t, stacked), Attrs(body=body(), **attrs)
    )
    graph = Graph((init, xs), (t, stacked), (first, second), first.outputs + second.outputs)
    assert len(scans(scan_merge(graph))) == 2


# the canonical form ---------------------------------------------------------------------


def test_canonical_form_ignores_value_ids_but_not_structure():
    def f(x):
        return lax.sin(lax.mul(x, x))

    x = rand(3)
    one, two = trace(f, x), trace(f, x)
    assert one.params != two.params
    assert canonical(one) == canonical(two)
    other = trace(lambda v: lax.cos(lax.mul(v, v)), x)
    assert canonical(one) != canonical(other)
    swapped = trace(lambda a, b: lax.sub(a, b), x, x)
    reordered = swapped.replace(params=swapped.params[::-1])
    assert canonical(swapped) != canonical(reordered)


def test_scan_merge_is_a_registered_pass_in_the_default_pipeline():
    from spmd.passes import DEFAULT_PIPELINE

    assert PASSES["scan_merge"] is scan_merge
    assert DEFAULT_PIPELINE.index("scan_merge") < DEFAULT_PIPELINE.index("cse")


# the sharded transformer ----------------------------------------------------------------


def model_all_reduces_in_scan_bodies(transformer, config, mesh) -> int:
    params = transformer.init_params(config, mesh)
    data = transformer.load_corpus(config)[:8]
    batch = spmd.device_put(data, transformer.sharding(mesh, "data"))
    optimizer = transformer.make_optimizer(config)
    state = optimizer.init(params)
    step = transformer.make_train_step(optimizer, mesh, params, state)
    records = step.lower(params, state, batch).compile().collectives()
    return sum(
        1
        for r in records
        if r.kind == "all_reduce" and r.axes == ("model",) and "scan body" in r.reason
    )


def test_sharded_transformer_train_step_does_megatrons_four_all_reduces_per_layer(monkeypatch):
    """Megatron's count: 2 forward (attention and MLP outputs), 2 backward (their inputs'
    gradients). The backward step reads saved residuals (no replayed forward all-reduce);
    without scan_merge the residual scan repeats the forward's 2."""
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import transformer

    config = transformer.Config(vocab=32, context=8, width=16, heads=4, layers=2, batch_size=8)
    mesh = transformer.parse_mesh("2x4")
    merged = model_all_reduces_in_scan_bodies(transformer, config, mesh)
    monkeypatch.setitem(PASSES, "scan_merge", lambda graph: graph)
    unmerged = model_all_reduces_in_scan_bodies(transformer, config, mesh)
    assert (unmerged, merged) == (6, 4)
