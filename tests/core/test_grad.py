"""Gradients against central finite differences in float64: every differentiable registry
op, grad/value_and_grad/vjp/jvp over pytrees, jit, and control flow; autodiff errors.

Every test runs with x64 on (the `x64_on` fixture), as JAX's own gradient checks do: a
central difference with step 1e-6 in float32 (machine epsilon 1.2e-7) is mostly rounding
noise, and the step and tolerances float32 would need (1e-3, 1e-2) would pass wrong rules.
"""

from __future__ import annotations

import contextlib
import inspect
from collections import namedtuple

import numpy as np
import pytest

import spmd
from spmd import control, lax
from spmd.autodiff import trace_to_graph
from spmd.errors import DTypeError, NonDifferentiableError, ShapeError
from spmd.interpreter import evaluate
from spmd.ops import NONDIFF, REGISTRY, ZERO_GRAD
from spmd.tracing import bind
from spmd.tree import tree_flatten, tree_leaves, tree_map, tree_unflatten
from tests.core.grad_cases import CASES, Case

# Differentiable ops with no case here yet, each with its owner's reason (keep it empty).
NO_CASE_YET: dict[str, str] = {
    "shard_map": "being written by its engineer; its body is a sub-graph like scan's",
}
# Ops that cannot be differentiated: each has an error test below.
NONDIFF_TESTED = {"while_loop"}

pytestmark = pytest.mark.usefixtures("x64_on")
RTOL, ATOL, EPS = 1e-5, 1e-7, 1e-6
RNG = np.random.default_rng(7)
Layer = namedtuple("Layer", ["w", "b"])


def here() -> str:
    """file:line of the caller's next line (where the error must point)."""
    return f"test_grad.py:{inspect.currentframe().f_back.f_lineno + 1}"


def compiled(fun, *args):
    """fun traced once and run by the reference interpreter (fast repeated evaluation)."""
    leaves, treedef = tree_flatten(args)
    graph, out_tree, captured = trace_to_graph(fun, leaves, treedef)
    assert not captured
    return lambda *a: tree_unflatten(out_tree, evaluate(graph, tree_flatten(a)[0]))


def numeric_grad(f, args):
    """Central differences of a scalar f with respect to every leaf of args."""
    leaves, treedef = tree_flatten(args)
    run = compiled(lambda *a: f(*a), *args)
    grads = []
    for k, leaf in enumerate(leaves):
        g = np.zeros(np.shape(leaf))
        for idx in np.ndindex(g.shape):
            shifted = []
            for sign in (1, -1):
                moved = [np.array(x, np.float64) for x in leaves]
                moved[k][idx] += sign * EPS
                shifted.append(float(run(*tree_unflatten(treedef, moved))))
            g[idx] = (shifted[0] - shifted[1]) / (2 * EPS)
        grads.append(g)
    return tree_unflatten(treedef, grads)


def assert_trees_close(got, want):
    got_leaves, got_tree = tree_flatten(got)
    want_leaves, want_tree = tree_flatten(want)
    assert got_tree == want_tree
    for g, w in zip(got_leaves, want_leaves):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=RTOL, atol=ATOL)


def is_float(x) -> bool:
    return np.issubdtype(np.asarray(x).dtype, np.floating)


def weighted_sum(outputs, weights):
    """sum_i <outputs[i], weights[i]> over the float outputs: a scalar objective."""
    total = None
    for out, w in zip(outputs, weights):
        if w is None:
            continue
        term = lax.reduce_sum(lax.mul(out, w), tuple(range(np.ndim(w))))
        total = term if total is None else lax.add(total, term)
    return total


def as_tuple(out):
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def scope(c: Case):
    return c.context() if c.context else contextlib.nullcontext()


# the registry ------------------------------------------------------------------------------


def differentiable_ops() -> set[str]:
    return {
        name for name, op in REGISTRY.items() if op.vjp is not NONDIFF and op.vjp is not ZERO_GRAD
    }


LIVE_CASES = [c for c in CASES if c.op in REGISTRY]


def test_every_differentiable_op_has_a_gradient_case():
    covered = {c.op for c in LIVE_CASES}
    missing = differentiable_ops() - covered - set(NO_CASE_YET)
    assert not missing, f"add a case to tests/core/grad_cases.py for {sorted(missing)}"
    nondiff = {name for name, op in REGISTRY.items() if op.vjp is NONDIFF}
    assert nondiff <= NONDIFF_TESTED, f"add an error test for {sorted(nondiff - NONDIFF_TESTED)}"
    assert not set(NO_CASE_YET) & covered, "a listed op has a case now: unlist it"


@pytest.mark.parametrize("c", LIVE_CASES, ids=lambda c: c.id)
def test_op_gradient_matches_finite_differences(c: Case):
    with scope(c):
        graph = trace_to_graph(c.fn, list(c.args), tree_flatten(c.args)[1])[0]
        assert c.op in {op.name for op in graph.walk()}, f"case {c.id} never binds {c.op}"
        outs = as_tuple(c.fn(*c.args))
        weights = [RNG.standard_normal(np.shape(o)) if is_float(o) else None for o in outs]

        def objective(*args):
            return weighted_sum(as_tuple(c.fn(*args)), weights)

        want = numeric_grad(objective, c.args)
        got = spmd.grad(objective, argnums=tuple(range(len(c.args))))(*c.args)
    assert_trees_close(tuple(got), want)


@pytest.mark.parametrize("c", LIVE_CASES, ids=lambda c: c.id)
def test_op_jvp_matches_finite_differences(c: Case):
    tangents = tuple(RNG.standard_normal(np.shape(a)) for a in c.args)
    with scope(c):
        outs, tangent_outs = spmd.jvp(lambda *a: as_tuple(c.fn(*a)), c.args, tangents)
        run = compiled(lambda *a: as_tuple(c.fn(*a)), *c.args)
        plus = run(*(a + EPS * t for a, t in zip(c.args, tangents)))
        minus = run(*(a - EPS * t for a, t in zip(c.args, tangents)))
    for out, tangent, p, m in zip(outs, tangent_outs, plus, minus):
        if is_float(out):
            np.testing.assert_allclose(tangent, (p - m) / (2 * EPS), rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("name", ["floor", "ceil", "round", "sign", "stop_gradient"])
def test_zero_grad_ops_give_zero_gradient(name):
    assert REGISTRY[name].vjp is ZERO_GRAD
    x = RNG.uniform(0.1, 0.4, (3,)) + np.arange(3)
    g = spmd.grad(lambda a: lax.reduce_sum(lax.add(bind(name, a), a), (0,)))(x)
    np.testing.assert_array_equal(g, np.ones(3))


# grad / value_and_grad / vjp / jvp ---------------------------------------------------------


def loss2(x, y):
    return lax.reduce_sum(lax.mul(lax.sin(x), lax.exp(y)), (0,))


X, Y = RNG.standard_normal(4), RNG.standard_normal(4)


def test_grad_argnums_int_and_tuple():
    want = numeric_grad(loss2, (X, Y))
    assert_trees_close(spmd.grad(loss2)(X, Y), want[0])
    assert_trees_close(spmd.grad(loss2, argnums=1)(X, Y), want[1])
    assert_trees_close(spmd.grad(loss2, argnums=(1, 0))(X, Y), (want[1], want[0]))


def test_value_and_grad_with_aux():
    def f(x, y):
        return loss2(x, y), {"norm": lax.reduce_sum(lax.mul(x, x), (0,))}

    (value, aux), g = spmd.value_and_grad(f, has_aux=True)(X, Y)
    assert float(value) == pytest.approx(np.sum(np.sin(X) * np.exp(Y)))
    assert float(aux["norm"]) == pytest.approx(np.sum(X * X))
    assert_trees_close(g, numeric_grad(loss2, (X, Y))[0])
    g2, aux2 = spmd.grad(f, argnums=(0,), has_aux=True)(X, Y)
    assert_trees_close(g2, (numeric_grad(loss2, (X, Y))[0],))
    assert float(aux2["norm"]) == pytest.approx(np.sum(X * X))


def params_loss(p):
    hidden = lax.tanh(
        lax.add(
            lax.dot_general(p["w"], p["layers"][0].w, (((0,), (0,)), ((), ()))), p["layers"][0].b
        )
    )
    out = lax.reduce_sum(lax.mul(hidden, p["layers"][1][0]), (0,))
    return lax.add(out, lax.reduce_sum(lax.mul(p["extra"][1], p["extra"][1]), (0, 1)))


def test_grad_over_a_pytree_of_params_keeps_its_structure():
    params = {
        "w": RNG.standard_normal(3),
        "layers": [
            Layer(RNG.standard_normal((3, 2)), RNG.standard_normal(2)),
            (RNG.standard_normal(2), None),
        ],
        "extra": (None, RNG.standard_normal((2, 2))),
    }
    got = spmd.grad(params_loss)(params)
    assert got["layers"][1][1] is None and got["extra"][0] is None
    assert isinstance(got["layers"][0], Layer)
    assert_trees_close(got, numeric_grad(params_loss, (params,))[0])


def test_vjp_gives_the_transposed_jacobian_product():
    def f(x, y):
        return {"a": lax.mul(x, y), "b": lax.cumsum(lax.sin(x), 0)}

    ct = {"a": RNG.standard_normal(4), "b": RNG.standard_normal(4)}
    out, vjp_fn = spmd.vjp(f, X, Y)
    np.testing.assert_allclose(out["a"], X * Y)
    want = numeric_grad(
        lambda x, y: lax.add(
            lax.reduce_sum(lax.mul(f(x, y)["a"], ct["a"]), (0,)),
            lax.reduce_sum(lax.mul(f(x, y)["b"], ct["b"]), (0,)),
        ),
        (X, Y),
    )
    assert_trees_close(vjp_fn(ct), want)


def test_jvp_matches_finite_differences_over_pytrees():
    def f(p):
        return (lax.exp(p[0]), lax.mul(p[0], p[1]))

    tangent = (RNG.standard_normal(4), RNG.standard_normal(4))
    _out, tan = spmd.jvp(f, ((X, Y),), (tangent,))
    plus = f((X + EPS * tangent[0], Y + EPS * tangent[1]))
    minus = f((X - EPS * tangent[0], Y - EPS * tangent[1]))
    for t, p, m in zip(tan, plus, minus):
        np.testing.assert_allclose(t, (np.asarray(p) - np.asarray(m)) / (2 * EPS), rtol=RTOL)


def test_grad_through_jit_and_jit_of_grad():
    want = numeric_grad(loss2, (X, Y))
    assert_trees_close(spmd.grad(spmd.jit(loss2), argnums=(0, 1))(X, Y), want)
    assert_trees_close(spmd.jit(spmd.grad(loss2, argnums=(0, 1)))(X, Y), want)


# control flow -------------------------------------------------------------------------------


def rnn_loss(params, xs):
    def step(h, x):
        pre = lax.add(
            lax.dot_general(h, params["u"], (((0,), (0,)), ((), ()))),
            lax.dot_general(x, params["w"], (((0,), (0,)), ((), ()))),
        )
        h = lax.tanh(lax.add(pre, params["b"]))
        return h, lax.reduce_sum(lax.mul(h, h), (0,))

    h, per_step = control.scan(step, lax.full((3,), 0.0, "float64"), xs)
    return lax.add(lax.reduce_sum(per_step, (0,)), lax.reduce_sum(h, (0,)))


def test_grad_of_an_rnn_through_scan():
    params = {
        "u": RNG.standard_normal((3, 3)) * 0.5,
        "w": RNG.standard_normal((2, 3)),
        "b": RNG.standard_normal(3),
    }
    xs = RNG.standard_normal((5, 2))
    want = numeric_grad(rnn_loss, (params, xs))
    assert_trees_close(spmd.grad(rnn_loss, argnums=(0, 1))(params, xs), want)
    assert_trees_close(spmd.jit(spmd.grad(rnn_loss))(params, xs), want[0])


def stack_loss(layers, x):
    def layer(h, p):
        return lax.tanh(lax.add(lax.dot_general(h, p.w, (((0,), (0,)), ((), ()))), p.b)), None

    out, _ = control.scan(layer, x, layers)
    return lax.reduce_sum(lax.mul(out, out), (0,))


def test_grad_of_a_stack_of_layers_via_scan():
    layers = Layer(RNG.standard_normal((4, 3, 3)) * 0.7, RNG.standard_normal((4, 3)))
    x = RNG.standard_normal(3)
    got = spmd.grad(stack_loss, argnums=(0, 1))(layers, x)
    assert isinstance(got[0], Layer)
    assert_trees_close(got, numeric_grad(stack_loss, (layers, x)))


def test_second_derivative_through_scan():
    def f(a):
        carry, _ = control.scan(lambda c, x: (lax.mul(lax.sin(c), a), None), a, None, length=3)
        return carry

    a = np.array(0.7)  # (np.float64 scalars trace as weak float32: see the report)
    second = spmd.grad(spmd.grad(f))(a)
    first = compiled(spmd.grad(f), a)
    want = (float(first(a + EPS)) - float(first(a - EPS))) / (2 * EPS)
    assert float(second) == pytest.approx(want, rel=1e-5)


def test_grad_through_scan_in_scan():
    def f(w, xs):
        def outer(c, row):
            inner, _ = control.scan(lambda a, x: (lax.sin(lax.add(lax.mul(a, w), x)), None), c, row)
            return inner, inner

        c, ys = control.scan(outer, np.array(0.3), xs)
        return lax.add(c, lax.reduce_sum(ys, (0,)))

    w, xs = np.array(0.8), RNG.standard_normal((3, 4))
    want = numeric_grad(f, (w, xs))
    assert_trees_close(spmd.grad(f, argnums=(0, 1))(w, xs), want)
    assert_trees_close(spmd.jit(spmd.grad(f, argnums=(0, 1)))(w, xs), want)


def test_grad_through_scan_bodies_that_pass_values_through():
    """A carry returned unchanged, an x returned as y, a closed-over value returned as y."""

    def f(w, x, xs):
        def step(c, xi):
            return (c[0], lax.add(c[1], xi)), (xi, w, c[0])

        (keep, total), (same, closed, firsts) = control.scan(step, (x, x), xs)
        out = lax.reduce_sum(lax.mul(closed, firsts), (0, 1))
        return lax.add(out, lax.reduce_sum(lax.add(keep, lax.mul(total, same[1])), (0,)))

    args = (RNG.standard_normal(3), RNG.standard_normal(3), RNG.standard_normal((4, 3)))
    assert_trees_close(spmd.grad(f, argnums=(0, 1, 2))(*args), numeric_grad(f, args))


def test_grad_through_cond_with_an_int_operand():
    def f(w, n):
        out = control.cond(lax.gt(n, 2), lambda v, m: w, lambda v, m: lax.mul(v, v), w, n)
        return lax.reduce_sum(out, (0,))

    np.testing.assert_allclose(spmd.grad(f)(X, np.int32(3)), np.ones(4))
    np.testing.assert_allclose(spmd.grad(f)(X, np.int32(1)), 2 * X)


@pytest.mark.parametrize("flag", [True, False])
def test_grad_through_cond_reaches_closed_over_values(flag):
    def f(x, w, p):
        out = control.cond(p, lambda v: lax.mul(lax.sin(v), w), lambda v: lax.add(v, w), x)
        return lax.reduce_sum(lax.mul(out, out), (0,))

    want = numeric_grad(lambda x, w: f(x, w, flag), (X, Y))
    assert_trees_close(spmd.grad(f, argnums=(0, 1))(X, Y, flag), want)
    assert_trees_close(spmd.jit(spmd.grad(f, argnums=(0, 1)))(X, Y, np.bool_(flag)), want)


def test_grad_through_fori_loop():
    def f(x, w):
        y = control.fori_loop(0, 3, lambda i, v: lax.sin(lax.mul(v, w)), x)
        return lax.reduce_sum(y, (0,))

    assert_trees_close(spmd.grad(f, argnums=(0, 1))(X, Y), numeric_grad(f, (X, Y)))


# errors -----------------------------------------------------------------------------------


def test_grad_of_a_non_scalar_output_is_a_shape_error_at_the_users_line():
    with pytest.raises(ShapeError) as err:
        where = here()
        spmd.grad(lambda x: lax.sin(x))(X)
    assert where in str(err.value) and "scalar" in str(err.value)


def test_grad_with_respect_to_an_int_input_is_a_dtype_error():
    with pytest.raises(DTypeError) as err:
        where = here()
        spmd.grad(lambda x, n: lax.reduce_sum(x, (0,)), argnums=1)(X, np.int32(3))
    assert where in str(err.value) and "int32" in str(err.value)


def test_grad_through_while_loop_is_a_non_differentiable_error():
    def f(x):
        where.append(here())
        out = control.while_loop(
            lambda c: lax.lt(c[0], 3), lambda c: (lax.add(c[0], 1), lax.sin(c[1])), (0, x)
        )
        return lax.reduce_sum(out[1], (0,))

    where: list[str] = []
    with pytest.raises(NonDifferentiableError) as err:
        spmd.grad(f)(X)
    assert where[0] in str(err.value) and "while_loop" in str(err.value)
    assert_trees_close(
        tree_map(np.asarray, tree_leaves(compiled(f, X)(X))), [np.sum(np.sin(np.sin(np.sin(X))))]
    )
