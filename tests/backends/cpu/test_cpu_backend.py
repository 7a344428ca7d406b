"""CPU backend behaviour: fused chains (hypothesis) vs the interpreter, compile cache hits in
a second process, thread splits, memory plan reuse and donation, interpreter switch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import spmd
import spmd.numpy as jnp
from backends import registry
from backends.cpu import compile_program
from backends.interpreter import InterpretedProgram
from spmd.interpreter import evaluate

UNARY = [
    jnp.exp,
    jnp.tanh,
    jnp.sin,
    jnp.abs,
    lambda x: jnp.sqrt(jnp.abs(x)),
    lambda x: x * x,
    lambda x: -x,
    lambda x: jnp.maximum(x, 0.0),
]
BINARY = [
    lambda a, b: a + b,
    lambda a, b: a * b,
    lambda a, b: a - b,
    lambda a, b: jnp.minimum(a, b),
    lambda a, b: jnp.where(a > b, a, b),
]
REDUCTIONS = [None, jnp.sum, jnp.max, jnp.min]


def lowered(f: object, *args: np.ndarray) -> spmd.ir.graph.Graph:
    return spmd.jit(f).lower(*args).graph


@st.composite
def chains(draw: st.DrawFn) -> tuple:
    rows = draw(st.sampled_from([1, 3, 7, 16]))
    cols = draw(st.sampled_from([1, 5, 13, 64]))
    steps = draw(
        st.lists(
            st.tuples(st.booleans(), st.integers(0, 7), st.integers(0, 4), st.booleans()),
            min_size=1,
            max_size=6,
        )
    )
    reduction = draw(st.sampled_from(range(len(REDUCTIONS))))
    axis = draw(st.sampled_from([0, 1, None]))
    dtype = draw(st.sampled_from(["float32", "float64"]))
    return rows, cols, steps, reduction, axis, dtype


@settings(max_examples=40, deadline=None, derandomize=True)
@given(chains())
def test_random_fused_chain_matches_interpreter(case: tuple) -> None:
    rows, cols, steps, reduction, axis, dtype = case

    def f(x: object, row: object, col: object) -> object:
        for binary, u, b, use_row in steps:
            other = row if use_row else col  # broadcasts along one axis
            x = BINARY[b](x, other) if binary else UNARY[u](x)
        r = REDUCTIONS[reduction]
        return x if r is None else r(x, axis=axis)

    rng = np.random.default_rng(rows * 100 + cols)
    x = rng.standard_normal((rows, cols)).astype(dtype)
    row = rng.standard_normal((1, cols)).astype(dtype)
    col = rng.standard_normal((rows, 1)).astype(dtype)
    graph = lowered(f, x, row, col)
    want = evaluate(graph, [x, row, col])
    got = compile_program(graph)([x, row, col])
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5, equal_nan=True)


def gelu(x: object) -> object:
    return 0.5 * x * (1 + jnp.tanh(0.7978845608 * (x + 0.044715 * x * x * x)))


def softmax(x: object) -> object:
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def test_gelu_fuses_into_one_kernel() -> None:
    x = np.random.default_rng(0).standard_normal((64, 33)).astype(np.float32)
    exe = compile_program(lowered(gelu, x))
    assert len(exe.kernels) == 1
    np.testing.assert_allclose(
        exe([x])[0], evaluate(lowered(gelu, x), [x])[0], rtol=2e-6, atol=1e-6
    )


def test_softmax_reductions_end_kernels_and_match() -> None:
    x = np.random.default_rng(1).standard_normal((33, 129)).astype(np.float32)
    graph = lowered(softmax, x)
    exe = compile_program(graph)
    assert [k.spec.reduce_mode for k in exe.kernels].count("trailing") == 2
    np.testing.assert_allclose(exe([x])[0], evaluate(graph, [x])[0], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_thread_splits_give_identical_results(threads: int) -> None:
    x = np.random.default_rng(2).standard_normal((300, 257)).astype(np.float32)
    graph = lowered(softmax, x)
    one = compile_program(graph, num_threads=1)([x])[0]
    many = compile_program(graph, num_threads=threads)([x])[0]
    np.testing.assert_array_equal(one, many)


def test_memory_plan_reuses_temporaries_and_reports_peak() -> None:
    def chain(x: object, w: object) -> object:
        for _ in range(4):
            x = jnp.tanh(x @ w)  # dots stop fusion: each tanh result is a temporary
        return x

    x = np.ones((32, 32), np.float32)
    graph = lowered(chain, x, x)
    exe = compile_program(graph)
    assert exe.plan.reused >= 2
    nbytes = x.nbytes
    assert exe.memory_per_device() <= 2 * nbytes + 3 * nbytes  # params + 2 temps + result
    assert exe.memory_per_device() >= 3 * nbytes
    np.testing.assert_allclose(
        exe([x * 0.01, x * 0.1])[0], evaluate(graph, [x * 0.01, x * 0.1])[0], rtol=1e-5
    )


def test_donated_param_is_updated_in_place() -> None:
    def update(p: object, g: object) -> object:
        return p - 0.1 * g

    p = np.arange(1000, dtype=np.float32)
    g = np.ones(1000, np.float32)
    graph = lowered(update, p, g)
    exe = compile_program(graph, donate=(True, False))
    out = exe([p, g])[0]
    np.testing.assert_allclose(out, np.arange(1000) - 0.1, rtol=1e-6)
    assert np.shares_memory(out, p)
    kept = compile_program(graph)([p.copy(), g])[0]
    assert not np.shares_memory(kept, p)


def test_results_are_fresh_between_calls() -> None:
    x = np.ones((8, 8), np.float32)
    exe = compile_program(lowered(softmax, x))
    first = exe([x])[0]
    second = exe([x * 2])[0]
    assert not np.shares_memory(first, second)
    np.testing.assert_allclose(first, np.full((8, 8), 1 / 8), rtol=1e-6)


def test_interpreter_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPMD_BACKEND", "interpreter")
    x = np.ones((4, 4), np.float32)
    exe = registry.compile_for("cpu", lowered(softmax, x))
    assert isinstance(exe, InterpretedProgram)
    np.testing.assert_allclose(exe([x])[0], np.full((4, 4), 0.25))


CACHE_SCRIPT = """
import time, numpy as np, spmd, spmd.numpy as jnp
from backends.cpu import compile_program
def f(x):
    return jnp.tanh(x * 1.25 + {salt}) / (1 + jnp.exp(-x))
x = np.ones((16, 16), np.float32)
graph = spmd.jit(f).lower(x).graph
t = time.perf_counter()
exe = compile_program(graph)
print(exe.cache_hits, len(exe.kernels), time.perf_counter() - t)
"""


def test_second_process_hits_the_disk_cache(tmp_path: Path) -> None:
    env = dict(os.environ, SPMD_CACHE_DIR=str(tmp_path))
    script = CACHE_SCRIPT.format(salt=float(os.getpid() % 1000))
    root = Path(__file__).resolve().parents[3]
    runs = [
        subprocess.run(
            [sys.executable, "-c", script],
            env=env,
            cwd=root,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()
        for _ in range(2)
    ]
    (hits1, n1, _), (hits2, n2, _) = runs
    assert int(hits1) == 0 and int(n1) >= 1
    assert int(hits2) == int(n2)
    assert list(tmp_path.glob("*.o"))
