"""Differential tests of the partitioner: every op family sharded on the four 8-device
meshes (even and uneven shapes) against the same function unsharded."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import spmd
import spmd.numpy as snp
from spmd import NamedSharding, P, lax, nn
from tests.partitioner.helpers import check_sharded, mesh, rand

D, M, Q = "data", "model", "pipe"


def case(
    name: str,
    fn: Callable[..., Any],
    shapes: list[Any],
    mesh_name: str,
    in_specs: list[Any],
    out_spec: Any = None,
    scale: float = 1.0,
    marks: Any = (),
) -> Any:
    """shapes: (shape, dtype) or a shape (float32)."""
    return pytest.param(
        fn, shapes, mesh_name, in_specs, out_spec, scale, id=f"{name}-{mesh_name}", marks=marks
    )


def inputs(shapes: list[Any]) -> list[np.ndarray]:
    out = []
    for i, s in enumerate(shapes):
        shape, dtype = (
            s if isinstance(s, tuple) and s and isinstance(s[-1], str) else (s, "float32")
        )
        out.append(rand(shape, dtype, seed=i))
    return out


def positive(x: Any) -> Any:
    return snp.abs(x) + 0.5


ELEMENTWISE = [
    case("tanh", snp.tanh, [(16, 8)], "2x4", [(D, M)], (D, M)),
    case("exp-uneven", snp.exp, [(10, 7)], "2x4", [(M, D)], (M, D)),
    case("log-7over8", lambda x: snp.log(positive(x)), [(7, 3)], "8", [(D,)], (D,)),
    case("add", snp.add, [(8, 12), (8, 12)], "4x2", [(D, M), (D, M)], (D, M)),
    case("add-mixed-specs", snp.add, [(8, 12), (8, 12)], "4x2", [(D, M), (M, D)], (D, M)),
    case("mul-bcast-row", lambda x, b: x * b, [(10, 6), (6,)], "2x4", [(M, None), None], (M,)),
    case(
        "sub-bcast-col",
        lambda x, b: x - b[:, None],
        [(12, 6), (12,)],
        "2x2x2",
        [((D, M), Q), (D,)],
        ((D, M), Q),
    ),
    case("div-scalar", lambda x: x / 3.0, [(9, 5)], "2x2x2", [(Q, D)], (Q, D)),
    case(
        "int-ops",
        lambda a, b: (a * b + a) // 3,
        [((10, 4), "int32"), ((10, 4), "int32")],
        "2x4",
        [(M, D), (M, D)],
        (M, D),
    ),
    case(
        "compare-select",
        lambda a, b: snp.where(a > b, a, b * 2),
        [(10, 6), (10, 6)],
        "4x2",
        [(D, M), (D, None)],
        (D, M),
    ),
    case(
        "bool-logic",
        lambda a, b: snp.logical_and(a, snp.logical_not(b)),
        [((8, 8), "bool"), ((8, 8), "bool")],
        "8",
        [(D,), (None, D)],
        (D,),
    ),
    case("convert", lambda x: x.astype(snp.int32) + 1, [(10, 3)], "2x4", [(M,)], (M,)),
    case("convert-f64", lambda x: x.astype("float64") * 2, [(6, 5)], "4x2", [(D, M)], (D, M)),
    case("size1-dim", snp.sin, [(1, 8)], "2x4", [(D, M)], (D, M)),
    case("size0-dim", lambda x: x * 2, [(0, 8)], "2x4", [(D, M)], (D, M)),
]

REDUCTIONS = [
    case("sum-sharded", lambda x: snp.sum(x, axis=0), [(16, 8)], "2x4", [(M, D)], ()),
    case("sum-uneven", lambda x: snp.sum(x, axis=0), [(10, 3)], "2x4", [(M, None)], ()),
    case("sum-unsharded", lambda x: snp.sum(x, axis=1), [(16, 8)], "4x2", [(D, None)], (D,)),
    case(
        "sum-keepdims",
        lambda x: snp.sum(x, axis=1, keepdims=True),
        [(8, 10)],
        "2x4",
        [(D, M)],
        (D,),
    ),
    case("sum-all-axes", lambda x: snp.sum(x), [(7, 9)], "2x2x2", [(D, (M, Q))], ()),
    case(
        "sum-two-axes", lambda x: snp.sum(x, axis=(0, 2)), [(4, 6, 10)], "2x2x2", [(D, M, Q)], (M,)
    ),
    case("sum-size1-sharded", lambda x: snp.sum(x, axis=0), [(1, 6)], "8", [(D,)], ()),
    case("max-uneven", lambda x: snp.max(x, axis=0), [(7, 5)], "8", [(D,)], ()),
    case("max-negative", lambda x: snp.max(x - 10.0, axis=1), [(4, 10)], "2x4", [(D, M)], (D,)),
    case("min-uneven", lambda x: snp.min(x + 10.0, axis=1), [(6, 10)], "4x2", [(None, D)], ()),
    case("prod-uneven", lambda x: snp.prod(x, axis=0), [(10, 4)], "2x4", [(M, D)], (D,)),
    case("int-sum", lambda x: snp.sum(x, axis=0), [((10, 4), "int32")], "2x4", [(M,)], ()),
    case("int-max", lambda x: snp.max(x, axis=0), [((10, 4), "int32")], "8", [(D,)], ()),
    case("mean", lambda x: snp.mean(x, axis=0), [(10, 4)], "2x4", [(M, D)], ()),
    case(
        "argmax-unsharded-axis", lambda x: snp.argmax(x, axis=1), [(8, 6)], "2x4", [(M, None)], (M,)
    ),
    case("argmax-sharded-axis", lambda x: snp.argmax(x, axis=0), [(10, 6)], "2x4", [(M, None)], ()),
    case("argmin-sharded-axis", lambda x: snp.argmin(x, axis=1), [(4, 9)], "8", [(None, D)], ()),
    case("cumsum-unsharded", lambda x: snp.cumsum(x, axis=1), [(8, 6)], "2x4", [(M,)], (M,)),
    case("cumsum-sharded", lambda x: snp.cumsum(x, axis=0), [(10, 3)], "2x4", [(M,)], ()),
]

CONTRACTIONS = [
    case("matmul-rows", snp.matmul, [(16, 8), (8, 6)], "2x4", [(D,), None], (D,)),
    case("matmul-contract", snp.matmul, [(8, 16), (16, 6)], "2x4", [(None, M), (M,)], ()),
    case("matmul-contract-uneven", snp.matmul, [(4, 10), (10, 6)], "2x4", [(None, M), (M,)], ()),
    case("matmul-contract-one-side", snp.matmul, [(4, 16), (16, 6)], "8", [(None, D), None], ()),
    case("matmul-free-both", snp.matmul, [(8, 12), (12, 6)], "4x2", [(D,), (None, M)], (D, M)),
    case("matmul-free-uneven", snp.matmul, [(10, 12), (12, 7)], "2x4", [(D,), (None, M)], (D, M)),
    case(
        "batched",
        lambda a, b: snp.einsum("bij,bjk->bik", a, b),
        [(4, 6, 8), (4, 8, 5)],
        "2x2x2",
        [(D, M, Q), (D, Q, None)],
        (D, M),
    ),
    case(
        "einsum-batch-uneven",
        lambda a, b: snp.einsum("bij,bjk->bik", a, b),
        [(3, 5, 4), (3, 4, 6)],
        "4x2",
        [(D,), (D, None, M)],
        (D, None, M),
    ),
    case("dot-vector", snp.dot, [(16,), (16,)], "8", [(D,), (D,)], ()),
    case("matvec", lambda a, v: a @ v, [(10, 12), (12,)], "2x4", [(M, D), (D,)], (M,)),
    case(
        "int-matmul",
        snp.matmul,
        [((6, 8), "int32"), ((8, 4), "int32")],
        "2x4",
        [(None, M), (M,)],
        (),
    ),
]

SHAPES = [
    case(
        "broadcast-in-dim",
        lambda x: lax.broadcast_in_dim(x, (4, 10, 6), (1, 2)),
        [(10, 6)],
        "2x4",
        [(M, None)],
        (D, M),
    ),
    case("broadcast-to", lambda x: snp.broadcast_to(x, (8, 6)), [(6,)], "8", [(D,)], (None, D)),
    case("reshape-merge", lambda x: snp.reshape(x, (32,)), [(8, 4)], "2x4", [(M,)], (M,)),
    case("reshape-merge-uneven", lambda x: snp.reshape(x, (30,)), [(10, 3)], "2x4", [(M,)], (M,)),
    case(
        "reshape-merge-minor", lambda x: snp.reshape(x, (24,)), [(4, 6)], "4x2", [(None, M)], (D,)
    ),
    case("reshape-split", lambda x: snp.reshape(x, (8, 4)), [(32,)], "2x4", [(M,)], (M,)),
    case("reshape-split-uneven", lambda x: snp.reshape(x, (5, 6)), [(30,)], "8", [(D,)], (D,)),
    case(
        "reshape-transposing", lambda x: snp.reshape(x, (3, 2)), [(2, 3)], "4x2", [(D,)], (None, M)
    ),
    case(
        "reshape-2d-mesh", lambda x: snp.reshape(x, (4, 2, 6)), [(8, 6)], "2x4", [((D, M),)], (D,)
    ),
    case("transpose", lambda x: x.T, [(10, 6)], "2x4", [(M, D)], (D, M)),
    case(
        "transpose-3d",
        lambda x: snp.transpose(x, (2, 0, 1)),
        [(4, 6, 8)],
        "2x2x2",
        [(D, M, Q)],
        (Q, D, M),
    ),
    case("slice-unsharded", lambda x: x[:, 1:5], [(8, 8)], "2x4", [(M,)], (M,)),
    case("slice-sharded", lambda x: x[2:9], [(12, 4)], "2x4", [(M,)]),
    case("slice-sharded-out", lambda x: x[2:9], [(12, 4)], "2x4", [(M,)], (M,)),
    case("slice-strided", lambda x: x[::3, :], [(16, 4)], "8", [(D,)], ()),
    case("pad-sharded", lambda x: lax.pad(x, 0.0, ((1, 2, 0), (0, 0, 0))), [(8, 3)], "2x4", [(M,)]),
    case(
        "pad-sharded-out",
        lambda x: lax.pad(x, 0.0, ((1, 2, 0), (0, 0, 0))),
        [(8, 3)],
        "2x4",
        [(M,)],
        (M,),
    ),
    case(
        "pad-unsharded",
        lambda x: lax.pad(x, 0.5, ((0, 0, 0), (2, 1, 1))),
        [(8, 3)],
        "2x4",
        [(M,)],
        (M,),
    ),
    case(
        "concat-sharded",
        lambda a, b: snp.concatenate([a, b], axis=0),
        [(8, 4), (6, 4)],
        "2x4",
        [(M,), (M,)],
    ),
    case(
        "concat-sharded-out",
        lambda a, b: snp.concatenate([a, b], axis=0),
        [(8, 4), (6, 4)],
        "2x4",
        [(M,), (M,)],
        (M,),
    ),
    case(
        "concat-unsharded",
        lambda a, b: snp.concatenate([a, b], axis=1),
        [(8, 4), (8, 2)],
        "4x2",
        [(D,), (D,)],
        (D,),
    ),
    case("rev-sharded", lambda x: snp.flip(x, axis=0), [(10, 3)], "2x4", [(M,)]),
    case("rev-sharded-out", lambda x: snp.flip(x, axis=0), [(10, 3)], "2x4", [(M,)], (M,)),
    case("rev-unsharded", lambda x: snp.flip(x, axis=1), [(8, 5)], "8", [(D,)], (D,)),
    case("roll-sharded", lambda x: snp.roll(x, 3, axis=0), [(16, 2)], "8", [(D,)]),
    case("roll-sharded-out", lambda x: snp.roll(x, 3, axis=0), [(16, 2)], "8", [(D,)], (D,)),
    case("roll-unsharded", lambda x: snp.roll(x, -2, axis=1), [(8, 6)], "2x4", [(M,)], (M,)),
]

INDEXING = [
    case(
        "take-sharded-table",
        lambda t, i: snp.take(t, i, axis=0),
        [(10, 4), ((6,), "int32")],
        "2x4",
        [(M,), None],
        (),
    ),
    case(
        "take-sharded-indices",
        lambda t, i: snp.take(t, i, axis=0),
        [(5, 4), ((8,), "int32")],
        "8",
        [None, (D,)],
        (D,),
    ),
    case(
        "take-feature-sharded",
        lambda t, i: snp.take(t, i, axis=0),
        [(6, 8), ((5,), "int32")],
        "2x4",
        [(None, M), None],
        (None, M),
    ),
    case("getitem-int", lambda x: x[3], [(10, 8)], "2x4", [(M, D)], ()),
    case(
        "dynamic-slice",
        lambda x, i: lax.dynamic_slice(x, (i, 0), (3, 4)),
        [(10, 4), ((), "int32")],
        "2x4",
        [(M,), None],
        (),
    ),
    case(
        "dynamic-slice-unsharded",
        lambda x, i: lax.dynamic_slice(x, (0, i), (8, 2)),
        [(8, 6), ((), "int32")],
        "4x2",
        [(D,), None],
        (D,),
    ),
]


def _softmax_fns() -> list[Any]:
    return [
        case(
            "softmax-sharded", lambda x: nn.softmax(x, axis=-1), [(4, 10)], "2x4", [(D, M)], (D, M)
        ),
        case(
            "softmax-sharded-8",
            lambda x: nn.softmax(x, axis=-1),
            [(3, 16)],
            "8",
            [(None, D)],
            (None, D),
        ),
        case(
            "log-softmax", lambda x: nn.log_softmax(x, axis=-1), [(6, 8)], "4x2", [(D, M)], (D, M)
        ),
        case(
            "layernorm",
            lambda x, s, b: nn.layer_norm(x, s, b),
            [(4, 12), (12,), (12,)],
            "2x4",
            [(D, M), (M,), (M,)],
            (D, M),
            scale=10.0,
        ),
        case(
            "layernorm-uneven",
            lambda x: nn.standardize(x),
            [(5, 10)],
            "2x4",
            [(None, M)],
            (None, M),
            scale=10.0,
        ),
    ]


FAMILIES = ELEMENTWISE + REDUCTIONS + CONTRACTIONS + SHAPES + INDEXING + _softmax_fns()


@pytest.mark.parametrize("fn,shapes,mesh_name,in_specs,out_spec,scale", FAMILIES)
def test_sharded_matches_unsharded(
    fn: Any, shapes: list[Any], mesh_name: str, in_specs: list[Any], out_spec: Any, scale: float
) -> None:
    args = inputs(shapes)
    for a in args:
        if a.dtype == np.int32 and a.ndim <= 1:
            a[...] = np.abs(a) % 4  # valid indices
    check_sharded(fn, args, mesh_name, in_specs, out_spec, scale)


def test_in_shardings_on_numpy_inputs() -> None:
    """in_shardings given to jit (inputs uncommitted numpy) instead of device_put."""
    check_sharded(
        lambda a, b: snp.tanh(a @ b),
        [rand((10, 8)), rand((8, 6), seed=1)],
        "2x4",
        [(D, M), (M,)],
        (D,),
        commit=False,
    )


def test_shardings_from_committed_inputs_are_kept() -> None:
    m = mesh("2x4")
    x = spmd.device_put(rand((8, 8)), NamedSharding(m, P(D, M)))
    out = spmd.jit(lambda a: a * 2)(x)
    assert out.sharding == NamedSharding(m, P(D, M))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(x) * 2)


def test_with_sharding_constraint_inside() -> None:
    m = mesh("2x4")

    def fn(x: Any) -> Any:
        y = spmd.with_sharding_constraint(snp.tanh(x), NamedSharding(m, P(None, M)))
        return snp.sum(y * 2, axis=0)

    check_sharded(fn, [rand((10, 8))], "2x4", [(M,)], (M,))


def test_nested_jit() -> None:
    inner = spmd.jit(lambda a, b: snp.tanh(a @ b))
    check_sharded(
        lambda a, b: inner(a, b) + 1,
        [rand((8, 12)), rand((12, 4), seed=1)],
        "4x2",
        [(D, M), (M,)],
        (D,),
    )


def test_grad_of_sharded_program() -> None:
    def loss(w: Any, x: Any) -> Any:
        return snp.mean(snp.tanh(x @ w) ** 2)

    args = [rand((8, 6)), rand((12, 8), seed=1)]
    check_sharded(spmd.grad(loss), args, "2x4", [(None, M), (D,)], (None, M), scale=10.0)
    check_sharded(
        spmd.value_and_grad(loss, argnums=(0, 1)), args, "2x2x2", [(Q, M), (D, Q)], None, scale=10.0
    )


MESH_SWEEP = ["8", "2x4", "4x2", "2x2x2"]


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", MESH_SWEEP)
@pytest.mark.parametrize("rows", [1, 7, 10, 16])
@pytest.mark.parametrize("op", ["sum0", "max1", "matmul", "softmax", "reshape", "transpose"])
def test_sweep(mesh_name: str, rows: int, op: str) -> None:
    """Every mesh x uneven row count x op, with each mesh axis on a different dim."""
    axes = mesh(mesh_name).axis_names
    first, rest = axes[0], (axes[1:] or None)
    fns = {
        "sum0": (lambda x: snp.sum(x, axis=0), [(rows, 6)], [(axes,)]),
        "max1": (lambda x: snp.max(x, axis=1), [(rows, 12)], [(first, rest)]),
        "matmul": (snp.matmul, [(rows, 8), (8, 6)], [(first, rest), (rest,)]),
        "softmax": (lambda x: nn.softmax(x, axis=0), [(rows, 4)], [(axes,)]),
        "reshape": (lambda x: snp.reshape(x, (rows * 4,)), [(rows, 4)], [(axes,)]),
        "transpose": (lambda x: x.T, [(rows, 6)], [(rest, first)]),
    }
    fn, shapes, specs = fns[op]
    check_sharded(fn, inputs(shapes), mesh_name, specs, None, scale=10.0)
