"""Fusion through reshapes that split and merge dims (the stacked runtime's all-reduce is
reshape -> reduce -> broadcast -> reshape): the loop is refined so both sides index it, and a
reshape whose split conflicts with another one in its group stays a view. All against the
interpreter."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

import spmd
import spmd.numpy as jnp
from backends.common.fusion import splits_and_merges
from backends.cpu import compile_program
from spmd.interpreter import evaluate


def _run(f: Callable[..., object], *args: np.ndarray) -> object:
    graph = spmd.jit(f).lower(*args).graph
    exe = compile_program(graph)
    for got, want in zip(exe(list(args)), evaluate(graph, list(args))):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    return exe


def _rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_stacked_all_reduce_then_update_is_two_kernels() -> None:
    def step(w: object, g: object) -> object:
        summed = jnp.sum(g.reshape(2, 4, 96), axis=0)  # the data-axis all-reduce
        return w - 0.1 * jnp.broadcast_to(summed, (2, 4, 96)).reshape(8, 96)

    exe = _run(step, _rand(8, 96), _rand(8, 96, seed=1))
    assert len(exe.kernels) == 2  # reduce; broadcast + reshape + update in one loop
    # the size-2 reduced dim loops innermost: registers, and the kept dims split on threads
    assert exe.kernels[0].spec.reduce_mode == "trailing" and exe.kernels[0].spec.splittable
    assert any(op.name == "reshape" for op in exe.kernels[1].ops)


def test_conflicting_splits_leave_one_reshape_as_a_view() -> None:
    def f(p: object, q: object) -> object:
        return p.reshape(6) * 2 + q.reshape(6)  # 6 as (2, 3) and as (3, 2)

    exe = _run(f, _rand(2, 3), _rand(3, 2, seed=1))
    assert len(exe.kernels) == 1
    assert sum(op.name == "reshape" for op in exe.kernels[0].ops) == 1


CASES = {
    "split_then_reduce_middle": (lambda x: jnp.sum(x.reshape(4, 3, 10) * 2, axis=1), (12, 10)),
    "merge_then_reduce_last": (lambda x: jnp.max(jnp.tanh(x).reshape(6, 20), axis=1), (6, 4, 5)),
    "reshape_under_broadcast": (lambda x: x + jnp.exp(x[0]).reshape(1, 6, 5), (3, 6, 5)),
    "transpose_then_merge": (lambda x: (x.T * 3).reshape(35) + 1, (5, 7)),
    "merge_split_chain": (lambda x: (x.reshape(24) * 2).reshape(3, 8) - x.reshape(3, 8), (2, 3, 4)),
    "iota_through_reshape": (lambda x: x + jnp.arange(20, dtype=jnp.float32).reshape(4, 5), (4, 5)),
    "small_leading_reduction": (lambda x: jnp.sum((x * 2).reshape(3, 4, 7), axis=0), (12, 7)),
    "unit_dims_and_split": (lambda x: jnp.sum(x.reshape(1, 2, 1, 6, 1), axis=3) * x[:, :1], (2, 6)),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_reshape_fusion_matches_interpreter(name: str) -> None:
    f, shape = CASES[name]
    _run(f, _rand(*shape))


@pytest.mark.parametrize(
    ("a", "b", "ok"),
    [
        ((2, 4, 5), (8, 5), True),
        ((8, 5), (2, 4, 5), True),
        ((6,), (2, 3), True),
        ((4, 6), (3, 8), False),
        ((2, 3), (3, 2), False),
        ((1, 6, 1), (6,), True),
        ((0, 3), (3, 0), False),
        ((0, 3), (1, 0, 3), True),
    ],
)
def test_splits_and_merges(a: tuple[int, ...], b: tuple[int, ...], ok: bool) -> None:
    assert splits_and_merges(a, b) is ok
