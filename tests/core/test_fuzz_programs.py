"""Hypothesis draws small random programs over spmd.numpy/spmd.lax (elementwise, reduce,
shape and dot ops, random shapes and dtypes); each runs under spmd.jit and is compared with
the same program written directly in numpy. Every generated graph also round-trips through
IR text, passes the verifier, and keeps its results under `optimize`.

Profiles (tests/conftest.py): HYPOTHESIS_PROFILE=ci (200 examples, fixed seed) or nightly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from hypothesis import given, note
from hypothesis import strategies as st

import spmd
import spmd.numpy as snp
from spmd import lax
from spmd.api import JitFunction
from spmd.interpreter import evaluate
from spmd.ir.parser import parse_graph
from spmd.ir.printer import print_graph
from spmd.ir.verifier import verify
from spmd.passes import optimize

DTYPES = ("float32", "float64", "int32")
TOLERANCE = {"float32": 2e-5, "float64": 1e-12, "int32": 0}


@dataclass(frozen=True)
class Step:
    """One op of a generated program: name, operand positions in the pool, static params."""

    name: str
    operands: tuple[int, ...]
    params: tuple[Any, ...] = ()


def is_float(value: Any) -> bool:
    return np.dtype(value.dtype).kind == "f"


UNARY_FLOAT = {
    "tanh": (snp.tanh, np.tanh),
    "sin": (snp.sin, np.sin),
    "exp": (
        lambda x: snp.exp(snp.minimum(x, 10.0)),
        lambda x: np.exp(np.minimum(x, np.asarray(10.0, x.dtype))),
    ),
}
UNARY_ANY = {
    "neg": (lambda x: -x, np.negative),
    "abs": (snp.abs, np.abs),
    "square": (lambda x: x * x, lambda x: x * x),
}
BINARY = {
    "add": (snp.add, np.add),
    "sub": (snp.subtract, np.subtract),
    "mul": (snp.multiply, np.multiply),
    "max": (snp.maximum, np.maximum),
    "min": (snp.minimum, np.minimum),
    "select": (lambda a, b: snp.where(a > b, a, b), lambda a, b: np.where(a > b, a, b)),
}


def run_step(step: Step, pool: list[Any], lib: str) -> Any:
    """Apply one step with spmd (lib='spmd') or numpy (lib='numpy')."""
    spmd_side = lib == "spmd"
    x = pool[step.operands[0]]
    name, params = step.name, step.params
    if name in UNARY_FLOAT or name in UNARY_ANY:
        fns = UNARY_FLOAT.get(name) or UNARY_ANY[name]
        return fns[0 if spmd_side else 1](x)
    if name in BINARY:
        y = pool[step.operands[1]].astype(x.dtype)
        return BINARY[name][0 if spmd_side else 1](x, y)
    if name == "scale":
        return x * params[0] + params[0]
    if name == "reduce_sum":
        return lax.reduce_sum(x, params) if spmd_side else np.sum(x, axis=params, dtype=x.dtype)
    if name == "reduce_max":
        if spmd_side:
            return lax.reduce_max(x, params)
        lowest = -np.inf if is_float(x) else np.iinfo(x.dtype).min  # XLA's identity of max
        return np.max(x, axis=params, initial=lowest)
    if name == "transpose":
        return lax.transpose(x, params) if spmd_side else np.transpose(x, params)
    if name == "reshape":
        return snp.reshape(x, params) if spmd_side else np.reshape(x, params)
    if name == "broadcast":
        shape = (params[0], *x.shape)
        return snp.broadcast_to(x, shape) if spmd_side else np.broadcast_to(x, shape)
    if name == "slice":
        starts, limits, strides = params
        if spmd_side:
            return lax.slice(x, starts, limits, strides)
        return x[tuple(slice(a, b, c) for a, b, c in zip(starts, limits, strides))]
    if name == "pad":
        if spmd_side:
            return lax.pad(x, lax.constant(np.zeros((), x.dtype)), params[0])
        return np.pad(x, [(lo, hi) for lo, hi, _ in params[0]])
    if name == "concatenate":
        return (
            lax.concatenate([x, x], params[0]) if spmd_side else np.concatenate([x, x], params[0])
        )
    if name == "dot":
        axis = x.ndim - 1
        if spmd_side:
            return lax.dot_general(x, x, (((axis,), (axis,)), ((), ())))
        return np.tensordot(x, x, axes=([axis], [axis])).astype(x.dtype)
    if name == "astype":
        return x.astype(params[0])
    raise AssertionError(f"unknown step {name}")


@st.composite
def programs(draw: Any) -> tuple[list[np.ndarray], list[Step]]:
    """Random inputs and a list of steps whose operands and params fit their shapes."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=3)))
    n_inputs = draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    inputs = []
    for _ in range(n_inputs):
        dtype = draw(st.sampled_from(DTYPES))
        value = rng.standard_normal(shape) if dtype != "int32" else rng.integers(-5, 6, shape)
        inputs.append(np.asarray(value, dtype=dtype))
    pool = [np.asarray(v) for v in inputs]
    steps: list[Step] = []
    for _ in range(draw(st.integers(1, 6))):
        step = draw_step(draw, pool)
        pool.append(np.asarray(run_step(step, pool, "numpy")))
        steps.append(step)
    return inputs, steps


def draw_step(draw: Any, pool: list[np.ndarray]) -> Step:
    i = draw(st.integers(0, len(pool) - 1))
    x = pool[i]
    same_shape = [j for j, v in enumerate(pool) if v.shape == x.shape]
    kinds = [*UNARY_ANY, *BINARY, "scale", "reshape", "broadcast"]
    if is_float(x):
        kinds += [*UNARY_FLOAT, "astype"]
    else:
        kinds += ["astype"]
    if x.ndim:
        kinds += ["reduce_sum", "reduce_max", "transpose", "slice", "pad", "concatenate"]
    if x.ndim and x.size <= 64:
        kinds += ["dot"]
    name = draw(st.sampled_from(kinds))
    if name in BINARY:
        return Step(name, (i, draw(st.sampled_from(same_shape))))
    return Step(name, (i,), draw_params(draw, name, x))


def draw_params(draw: Any, name: str, x: np.ndarray) -> tuple[Any, ...]:
    n = x.ndim
    if name == "scale":
        return (
            draw(st.sampled_from([2, -1, 3]))
            if not is_float(x)
            else draw(st.sampled_from([0.5, -1.5, 2.0, 0.0])),
        )
    if name in ("reduce_sum", "reduce_max"):
        return tuple(sorted(draw(st.sets(st.integers(0, n - 1), min_size=1))))
    if name == "transpose":
        return tuple(draw(st.permutations(range(n))))
    if name == "reshape":
        return (x.size,) if draw(st.booleans()) or n == 0 else tuple(reversed(x.shape))
    if name == "broadcast":
        return (draw(st.integers(1, 3)),)
    if name == "slice":
        starts = tuple(draw(st.integers(0, max(s - 1, 0))) for s in x.shape)
        limits = tuple(draw(st.integers(a, s)) for a, s in zip(starts, x.shape))
        return starts, limits, tuple(draw(st.integers(1, 2)) for _ in x.shape)
    if name == "pad":
        return (tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2)), 0) for _ in x.shape),)
    if name == "concatenate":
        return (draw(st.integers(0, n - 1)),)
    if name == "astype":
        choices = ["float32", "float64"] if is_float(x) else ["float32", "float64", "int32"]
        return (draw(st.sampled_from(choices)),)
    return ()


def build(steps: list[Step], n_inputs: int) -> Any:
    def program(*args: Any) -> Any:
        pool = list(args)
        for step in steps:
            pool.append(run_step(step, pool, "spmd"))
        return tuple(pool[n_inputs:])

    return program


def assert_close(got: np.ndarray, want: np.ndarray, what: str, dtypes: set[str]) -> None:
    """The tolerance is the loosest of the dtypes the value was computed in (a float32
    tanh widened to float64 carries float32 rounding)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != {want.dtype}"
    tol = max(TOLERANCE.get(d, 0) for d in dtypes | {str(want.dtype)})
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol, equal_nan=True, err_msg=what)


@given(programs())
def test_random_programs_match_numpy_and_survive_text_verify_and_optimize(case):
    with spmd.enable_x64(
        True
    ):  # the programs mix float64 with 32-bit types, as numpy (the oracle) does
        check_program(case)


def check_program(case):
    inputs, steps = case
    note("steps: " + repr(steps))
    program = build(steps, len(inputs))
    graph = JitFunction(program)._trace(tuple(inputs), {})[0]
    note(print_graph(graph))
    verify(graph)
    assert parse_graph(print_graph(graph)) == graph
    optimized = optimize(graph, verify=True)
    assert parse_graph(print_graph(optimized)) == optimized
    want = [np.asarray(v) for v in build_numpy(steps, inputs)]
    for got, expected in zip(evaluate(optimized, inputs), evaluate(graph, inputs)):
        np.testing.assert_array_equal(got, expected, err_msg=print_graph(optimized))
    results = spmd.jit(program)(*inputs)
    used = {t.dtype for t in graph.types.values()}
    for k, (got, expected) in enumerate(zip(results, want)):
        assert_close(np.asarray(got), expected, f"result {k} ({steps[k].name})", used)


def build_numpy(steps: list[Step], inputs: list[np.ndarray]) -> list[np.ndarray]:
    pool: list[Any] = [np.asarray(v) for v in inputs]
    for step in steps:
        pool.append(np.asarray(run_step(step, pool, "numpy")))
    return pool[len(inputs) :]
