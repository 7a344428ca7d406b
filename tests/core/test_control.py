"""cond, switch, scan, fori_loop and while_loop against plain Python loops over numpy."""

from __future__ import annotations

import inspect
from collections import namedtuple

import numpy as np
import pytest

import spmd
from spmd import control, lax
from spmd.errors import DTypeError, ShapeError
from spmd.ops import REGISTRY

RNG = np.random.default_rng(0)
Pair = namedtuple("Pair", ["a", "b"])


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def here() -> str:
    """file:line of the caller's next line (where the error must point)."""
    return f"test_control.py:{inspect.currentframe().f_back.f_lineno + 1}"


def op_names(fun, *args) -> list[str]:
    return [op.name for op in spmd.jit(fun).lower(*args).graph.walk()]


# cond / switch -------------------------------------------------------------------------


@pytest.mark.parametrize("jitted", [False, True])
@pytest.mark.parametrize("flag", [True, False])
def test_cond_picks_the_branch_like_python_if(jitted, flag):
    x = rand(3)

    def f(p, v):
        return control.cond(p, lambda a: lax.exp(a), lambda a: lax.neg(a), v)

    run = spmd.jit(f) if jitted else f
    np.testing.assert_allclose(run(np.bool_(flag), x), np.exp(x) if flag else -x, rtol=1e-6)


def test_cond_on_a_traced_comparison_with_pytree_operands_and_closure():
    x, y, w = rand(2, 3), rand(3), rand(3)

    def f(x, y, w):
        def big(ops):
            return {"s": lax.mul(ops.a, w), "t": lax.add(ops.b, 1.0)}

        def small(ops):
            return {"s": lax.neg(ops.a), "t": ops.b}

        return control.cond(lax.gt(lax.reduce_sum(x, (0, 1)), 0.0), big, small, Pair(y, x))

    for scale in (1.0, -1.0):
        out = spmd.jit(f)(scale * np.abs(x), y, w)
        if scale > 0:
            np.testing.assert_allclose(out["s"], y * w, rtol=1e-6)
            np.testing.assert_allclose(out["t"], np.abs(x) + 1, rtol=1e-6)
        else:
            np.testing.assert_allclose(out["s"], -y, rtol=1e-6)
            np.testing.assert_allclose(out["t"], -np.abs(x), rtol=1e-6)


def test_cond_integer_predicate_means_nonzero():
    assert float(control.cond(np.int32(-3), lambda: 1.0, lambda: 2.0)) == 1.0
    assert float(control.cond(np.int32(0), lambda: 1.0, lambda: 2.0)) == 2.0


@pytest.mark.parametrize("index,expected", [(-4, 0), (0, 0), (1, 1), (2, 2), (9, 2)])
def test_switch_clamps_the_index_like_jax(index, expected):
    x = rand(4)
    branches = [lambda a: a, lambda a: lax.sin(a), lambda a: lax.mul(a, a)]
    want = [x, np.sin(x), x * x][expected]
    got = spmd.jit(lambda i, a: control.switch(i, branches, a))(np.int32(index), x)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(control.switch(index, branches, x), want, rtol=1e-6)


def test_cond_branches_capture_different_outer_values():
    a, b, x = rand(3), rand(3), rand(3)

    def f(a, b, x, p):
        return control.cond(p, lambda v: lax.mul(v, a), lambda v: lax.add(v, b), x)

    np.testing.assert_allclose(spmd.jit(f)(a, b, x, True), x * a, rtol=1e-6)
    np.testing.assert_allclose(spmd.jit(f)(a, b, x, False), x + b, rtol=1e-6)


def test_cond_branches_returning_different_shapes_is_a_shape_error():
    with pytest.raises(ShapeError) as err:
        where = here()
        control.cond(True, lambda: np.zeros(2, np.float32), lambda: np.zeros(3, np.float32))
    assert where in str(err.value)


def test_cond_weak_and_strong_branch_results_agree():
    out = control.cond(False, lambda x: 1.0, lambda x: x, np.float32(3))
    assert out.dtype == np.float32 and float(out) == 3.0


# scan ----------------------------------------------------------------------------------


@pytest.mark.parametrize("jitted", [False, True])
def test_scan_cumulative_sum_matches_numpy(jitted):
    xs = rand(5, 3)

    def f(xs):
        return control.scan(
            lambda c, x: (lax.add(c, x), lax.mul(c, 2.0)), np.zeros(3, np.float32), xs
        )

    carry, ys = (spmd.jit(f) if jitted else f)(xs)
    prefix = np.concatenate([np.zeros((1, 3), np.float32), np.cumsum(xs, 0)[:-1]])
    np.testing.assert_allclose(carry, xs.sum(0), rtol=1e-5)
    np.testing.assert_allclose(ys, 2 * prefix, rtol=1e-5)


def test_scan_reverse_runs_from_the_end():
    xs = rand(6)
    carry, ys = control.scan(
        lambda c, x: (lax.add(lax.mul(c, 0.5), x), c), np.float32(0), xs, reverse=True
    )
    c, expect = np.float32(0), np.zeros(6, np.float32)
    for i in reversed(range(6)):
        expect[i] = c
        c = c * 0.5 + xs[i]
    np.testing.assert_allclose(carry, c, rtol=1e-6)
    np.testing.assert_allclose(ys, expect, rtol=1e-6)


def test_scan_pytree_carry_xs_and_ys():
    xs = {"u": rand(4, 2), "v": (rand(4), np.arange(4, dtype=np.int32))}

    def step(carry, x):
        total, count = carry
        total = lax.add(total, lax.mul(x["u"], lax.broadcast_in_dim(x["v"][0], (2,), ())))
        count = lax.add(count, x["v"][1])
        return (total, count), Pair(a=total, b=None)

    (total, count), ys = spmd.jit(
        lambda xs: control.scan(step, (np.zeros(2, np.float32), np.int32(0)), xs)
    )(xs)
    prods = xs["u"] * xs["v"][0][:, None]
    np.testing.assert_allclose(total, prods.sum(0), rtol=1e-5)
    assert int(count) == 6 and ys.b is None
    np.testing.assert_allclose(ys.a, np.cumsum(prods, 0), rtol=1e-5)


def test_scan_without_xs_needs_length():
    carry, ys = control.scan(lambda c, _: (lax.mul(c, 3.0), c), np.float32(1), length=4)
    assert float(carry) == 81.0
    np.testing.assert_allclose(ys, [1, 3, 9, 27])
    with pytest.raises(ShapeError, match="length"):
        control.scan(lambda c, _: (c, None), np.float32(1))


def test_scan_closure_over_jit_arguments_becomes_const_operands():
    w, xs = rand(3, 3), rand(5, 3)

    def f(w, xs):
        def step(h, x):
            h = lax.tanh(lax.add(lax.dot_general(h, w, (((0,), (0,)), ((), ()))), x))
            return h, h

        return control.scan(step, np.zeros(3, np.float32), xs)

    graph = spmd.jit(f).lower(w, xs).graph
    scan_op = next(op for op in graph.ops if op.name == "scan")
    assert scan_op.attrs["num_consts"] == 1 and scan_op.inputs[0] == graph.params[0]
    h, hs = spmd.jit(f)(w, xs)
    expect = np.zeros(3, np.float32)
    for i, x in enumerate(xs):
        expect = np.tanh(expect @ w + x)
        np.testing.assert_allclose(hs[i], expect, rtol=1e-5)
    np.testing.assert_allclose(h, expect, rtol=1e-5)


def test_nested_scan_in_scan_matches_double_loop():
    xs = rand(3, 4)

    def outer(c, row):
        inner, _ = control.scan(lambda a, x: (lax.add(lax.mul(a, c), x), None), c, row)
        return lax.add(inner, 0.1), inner

    f = spmd.jit(lambda xs: control.scan(outer, np.float32(0.5), xs))
    carry, ys = f(xs)
    c = np.float32(0.5)
    for i, row in enumerate(xs):
        a = c
        for x in row:
            a = a * c + x
        assert np.isclose(ys[i], a, rtol=1e-5)
        c = a + np.float32(0.1)
    assert np.isclose(carry, c, rtol=1e-5)
    assert op_names(lambda xs: control.scan(outer, np.float32(0.5), xs)[0], xs).count("scan") == 2


def test_scan_weak_python_scalar_init_is_promoted():
    carry, _ = control.scan(lambda c, x: (lax.add(c, x), None), 0.0, rand(3))
    assert carry.dtype == np.float32 and not carry.weak_type


def test_scan_carry_changing_dtype_is_a_shape_error_at_the_users_line():
    with pytest.raises(ShapeError) as err:
        where = here()
        control.scan(
            lambda c, x: (lax.convert_element_type(c, "float16"), None), np.float32(0), rand(3)
        )
    assert where in str(err.value) and "float16" in str(err.value)


def test_scan_carry_changing_shape_names_the_leaf():
    with pytest.raises(ShapeError) as err:
        where = here()
        control.scan(
            lambda c, x: ({"h": lax.broadcast(c["h"], (2,))}, None), {"h": np.float32(0)}, rand(3)
        )
    assert where in str(err.value) and "['h']" in str(err.value)


def test_scan_xs_of_different_lengths_is_a_shape_error():
    with pytest.raises(ShapeError, match="leading"):
        control.scan(lambda c, x: (c, None), np.float32(0), (rand(3), rand(4)))


def test_scan_factors_block_the_scan_dim_and_share_carry_dims():
    graph = (
        spmd.jit(lambda c, xs: control.scan(lambda c, x: (lax.add(c, x), lax.neg(x)), c, xs))
        .lower(rand(2), rand(5, 2))
        .graph
    )
    op = next(op for op in graph.ops if op.name == "scan")
    factors = REGISTRY["scan"].factors(*[graph.types[v] for v in op.inputs], **op.attrs)
    (carry_in, xs), (carry_out, ys) = factors.operands, factors.results
    assert carry_in == carry_out and xs[0] == ys[0] and factors.blocked == {xs[0]}
    assert xs[0] not in carry_in and xs[1] != carry_in[0]


# fori_loop / while_loop -----------------------------------------------------------------


def test_fori_loop_static_bounds_lowers_to_scan():
    x = rand(3)

    def f(x):
        return control.fori_loop(
            2,
            6,
            lambda i, v: lax.add(
                lax.mul(v, 0.5), lax.broadcast(lax.convert_element_type(i, "float32"), (3,))
            ),
            x,
        )

    expect = x.copy()
    for i in range(2, 6):
        expect = expect * 0.5 + i
    np.testing.assert_allclose(spmd.jit(f)(x), expect, rtol=1e-6)
    np.testing.assert_allclose(f(x), expect, rtol=1e-6)
    names = op_names(f, x)
    assert "scan" in names and "while_loop" not in names


def test_fori_loop_traced_bounds_lowers_to_while_loop():
    def f(lo, hi, x):
        return control.fori_loop(lo, hi, lambda i, v: lax.add(v, lax.mul(i, i)), x)

    for lo, hi in [(0, 5), (3, 7), (4, 2)]:
        expect = sum(i * i for i in range(lo, hi))
        assert int(spmd.jit(f)(np.int32(lo), np.int32(hi), np.int32(0))) == expect
    assert "while_loop" in op_names(f, np.int32(0), np.int32(3), np.int32(0))


def test_while_loop_matches_python_while_with_pytree_and_closure():
    limit = np.float32(100)

    def f(x, limit):
        return control.while_loop(
            lambda s: lax.lt(s["x"], limit),
            lambda s: {"x": lax.mul(s["x"], 3.0), "n": lax.add(s["n"], 1)},
            {"x": x, "n": np.int32(0)},
        )

    for start in (0.5, 7.0, 200.0):
        out = spmd.jit(f)(np.float32(start), limit)
        x, n = np.float32(start), 0
        while x < limit:
            x, n = x * 3, n + 1
        assert float(out["x"]) == pytest.approx(x) and int(out["n"]) == n
        assert int(f(np.float32(start), limit)["n"]) == n


def test_while_loop_cond_must_return_a_bool_scalar():
    with pytest.raises(DTypeError) as err:
        where = here()
        control.while_loop(lambda x: x, lambda x: lax.add(x, 1.0), np.float32(0))
    assert where in str(err.value)


def test_while_loop_body_changing_shape_is_a_shape_error():
    with pytest.raises(ShapeError) as err:
        where = here()
        control.while_loop(
            lambda x: lax.lt(lax.reduce_sum(x, (0,)), 1.0),
            lambda x: lax.concatenate([x, x], 0),
            rand(2),
        )
    assert where in str(err.value)


def test_lax_reexports_control_flow():
    assert lax.scan is control.scan and lax.cond is control.cond
    assert lax.fori_loop is control.fori_loop and lax.while_loop is control.while_loop
    assert lax.switch is control.switch
