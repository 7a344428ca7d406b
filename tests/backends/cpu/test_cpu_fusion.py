"""CPU backend fusion and launch: recomputed producers (layernorm in 3 kernels), inlined
views, reductions over every dim split across threads, all against the interpreter."""

from __future__ import annotations

import numpy as np
import pytest

import spmd
import spmd.numpy as jnp
from backends.cpu import compile_program
from spmd.interpreter import evaluate


def lowered(f: object, *args: np.ndarray) -> spmd.ir.graph.Graph:
    return spmd.jit(f).lower(*args).graph


def layernorm(x: object, gamma: object, beta: object) -> object:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    centered = x - mean
    var = jnp.mean(centered * centered, axis=-1, keepdims=True)
    return centered / jnp.sqrt(var + 1e-5) * gamma + beta


def test_layernorm_runs_as_two_reductions_and_one_normalize_kernel() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((37, 129)).astype(np.float32) * 3 + 1
    gamma, beta = rng.standard_normal(129).astype(np.float32), np.ones(129, np.float32)
    graph = lowered(layernorm, x, gamma, beta)
    exe = compile_program(graph)
    assert len(exe.kernels) == 3
    assert [k.spec.reduce_mode for k in exe.kernels] == ["trailing", "trailing", ""]
    assert exe.plan.peak_bytes <= x.nbytes * 2 + 129 * 8 + 37 * 8 + 64  # no [37,129] temp
    want = evaluate(graph, [x, gamma, beta])[0]
    np.testing.assert_allclose(exe([x, gamma, beta])[0], want, rtol=1e-5, atol=1e-5)


def test_softmax_stores_exp_in_its_sum_kernel_for_the_divide() -> None:
    def softmax(x: object) -> object:
        e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
        return e / jnp.sum(e, axis=-1, keepdims=True)

    x = np.random.default_rng(1).standard_normal((20, 50)).astype(np.float32)
    graph = lowered(softmax, x)
    exe = compile_program(graph)
    assert len(exe.kernels) == 3
    _, sum_kernel, divide_kernel = exe.kernels
    assert len(sum_kernel.spec.stores) == 1 and sum_kernel.spec.reduce is not None
    assert not any(n[0] == "op" and n[2] == "exp" for n in divide_kernel.spec.nodes)
    np.testing.assert_allclose(exe([x])[0], evaluate(graph, [x])[0], rtol=1e-6, atol=1e-7)


def test_expensive_producer_used_twice_is_stored_once() -> None:
    def f(x: object) -> object:
        s = jnp.sin(x)  # a libm call: not worth recomputing
        return jnp.sum(s, axis=1), s * 2

    x = np.random.default_rng(2).standard_normal((8, 9)).astype(np.float32)
    graph = lowered(f, x)
    exe = compile_program(graph)
    sins = sum(1 for k in exe.kernels for n in k.spec.nodes if n[0] == "op" and n[2] == "sin")
    assert sins == 1
    for got, want in zip(exe([x]), evaluate(graph, [x])):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_transposed_and_reshaped_operands_are_read_in_place() -> None:
    def f(a: object, b: object) -> object:
        return jnp.tanh(a.T) * b.reshape(6, 1, 5)[:, 0, :] + 1

    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((5, 6)).astype(np.float32), rng.standard_normal((6, 5))
    b = b.astype(np.float32)
    graph = lowered(f, a, b)
    exe = compile_program(graph)
    assert len(exe.kernels) == 1
    assert not any(s.kind == "view" for s in exe.steps if s.op.name == "transpose")
    np.testing.assert_allclose(exe([a, b])[0], evaluate(graph, [a, b])[0], rtol=1e-6)


@pytest.mark.parametrize(
    "dtype,kind",
    [("float32", "sum"), ("float64", "max"), ("int32", "sum"), ("int8", "min"), ("float32", "min")],
)
def test_reduce_over_every_dim_splits_across_threads(dtype: str, kind: str) -> None:
    reduce = {"sum": jnp.sum, "max": jnp.max, "min": jnp.min}[kind]
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((300, 257)) * 50).astype(dtype)
    graph = lowered(lambda v: reduce(v * 2), x)
    exe = compile_program(graph, num_threads=3)
    (step,) = [s for s in exe.steps if s.kind == "kernel"]
    assert step.partials and len(step.chunks) == 2  # 77100 elements: 2 chunks of >= 32768
    want = evaluate(graph, [x])[0]
    np.testing.assert_allclose(exe([x])[0], want, rtol=1e-5)
    if dtype == "float32" and kind == "min":
        x[17, 3] = np.nan
        assert np.isnan(exe([x])[0])


def test_tiny_program_dispatch_reuses_buffers() -> None:
    x = np.ones((8, 8), np.float32)
    exe = compile_program(lowered(lambda a, b: jnp.tanh(a * 2.0 + b) * a, x, x))
    first = exe([x, x])[0]
    second = exe([x, 2 * x])[0]
    assert not np.shares_memory(first, second)
    np.testing.assert_allclose(second, np.tanh(4.0) * np.ones((8, 8)), rtol=1e-6)


def test_results_land_in_the_callers_arrays() -> None:
    """into[k] receives result k: computed there by its kernel or dot, copied otherwise
    (a param passed through, the same value returned twice)."""

    def f(x: object, w: object) -> object:
        y = jnp.tanh(x) * 2
        return y, x @ w, x, y

    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    w = np.random.default_rng(4).standard_normal((5, 3)).astype(np.float32)
    graph = lowered(f, x, w)
    exe = compile_program(graph)
    want = evaluate(graph, [x, w])
    into = [
        np.empty((4, 5), np.float32),
        np.empty((4, 3), np.float32),
        None,
        np.empty((4, 5), np.float32),
    ]
    got = exe([x, w], into)
    assert got[0] is into[0] and got[1] is into[1] and got[3] is into[3]
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
