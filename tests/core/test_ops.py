"""Op tests generated from the registry: every op x dtype x shape case runs under jit and is
compared with the op's reference and, where there is one, an independent float64 formula."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

import spmd
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY, collective, control
from spmd.tracing import bind
from tests.core.oracle import FLOAT_DTYPES, assert_close, np_dtype, rand

# Ops tested by their owners' suites (control flow takes sub-graphs, collectives a mesh).
OWNED_ELSEWHERE = {op.name for op in control.OPS + collective.OPS} | {
    "cond",
    "scan",
    "while_loop",
    "all_reduce",
    "all_gather",
    "reduce_scatter",
    "all_to_all",
    "collective_permute",
    "axis_index",
    "shard_map",
    # multi-output, with tests of their own: tests/core/test_attention.py, test_remat.py
    "dot_product_attention",
    "dot_product_attention_bwd",
    "remat",
}

SHAPES = [(), (0,), (7,), (3, 5)]
F64 = np.float64


@dataclass
class Case:
    op: str
    args: list[np.ndarray]
    attrs: dict[str, Any] = field(default_factory=dict)
    formula: Callable[..., Any] | None = None  # independent oracle on float64 copies

    def label(self, number: int) -> str:
        shapes = "_".join("x".join(map(str, a.shape)) or "s" for a in self.args)
        dtype = str(self.args[0].dtype) if self.args else "none"
        return f"{self.op}-{dtype}-{shapes}-{number}"


CASES: list[Case] = []
RNG = np.random.default_rng(1234)


def add(
    op: str, args: list[np.ndarray], formula: Callable[..., Any] | None = None, **attrs: Any
) -> None:
    CASES.append(Case(op, args, attrs, formula))


def r(shape: tuple[int, ...], dtype: str = "float32", low: float = -3, high: float = 3) -> Any:
    return rand(RNG, shape, dtype, low, high)


# elementwise ---------------------------------------------------------------------------


def _erf(x: np.ndarray) -> np.ndarray:
    return np.vectorize(math.erf)(x) if x.size else x


UNARY = {  # name: (formula, low, high, float only)
    "neg": (np.negative, -3, 3, False),
    "abs": (np.abs, -3, 3, False),
    "sign": (np.sign, -3, 3, False),
    "exp": (np.exp, -3, 3, True),
    "log": (np.log, 0.1, 3, True),
    "log1p": (np.log1p, 0, 3, True),
    "expm1": (np.expm1, -2, 2, True),
    "tanh": (np.tanh, -3, 3, True),
    "logistic": (lambda x: 1 / (1 + np.exp(-x)), -3, 3, True),
    "sin": (np.sin, -3, 3, True),
    "cos": (np.cos, -3, 3, True),
    "tan": (np.tan, -1, 1, True),
    "sqrt": (np.sqrt, 0.1, 3, True),
    "rsqrt": (lambda x: 1 / np.sqrt(x), 0.1, 3, True),
    "erf": (_erf, -2, 2, True),
    "floor": (np.floor, -3, 3, True),
    "ceil": (np.ceil, -3, 3, True),
    "round": (np.round, -3, 3, True),
    "stop_gradient": (lambda x: x, -3, 3, False),
}
for name, (fn, low, high, float_only) in UNARY.items():
    for dtype in FLOAT_DTYPES + (() if float_only else ("int32",)):
        for shape in SHAPES if dtype == "float32" else [(3, 5)]:
            exact = name in ("floor", "ceil", "round", "sign")
            add(name, [r(shape, dtype, low, high)], None if exact and dtype != "float64" else fn)
add("is_finite", [np.array([1.0, np.inf, -np.inf, np.nan, 0.0], np.float32)], np.isfinite)
add("is_finite", [r((3, 5), "bfloat16")], np.isfinite)

BINARY = {  # name: (formula, low, high, dtypes)
    "add": (np.add, -3, 3, FLOAT_DTYPES + ("int32", "int64")),
    "sub": (np.subtract, -3, 3, FLOAT_DTYPES + ("int32",)),
    "mul": (np.multiply, -3, 3, FLOAT_DTYPES + ("int32",)),
    "div": (np.divide, 0.5, 3, FLOAT_DTYPES),
    "rem": (np.fmod, 0.5, 5, ("float32", "float64", "int32")),
    "pow": (np.power, 0.5, 2, ("float32", "float64")),
    "atan2": (np.arctan2, -3, 3, ("float32", "float16")),
    "max": (np.maximum, -3, 3, FLOAT_DTYPES + ("int32",)),
    "min": (np.minimum, -3, 3, FLOAT_DTYPES + ("int32",)),
}
for name, (fn, low, high, dts) in BINARY.items():
    for dtype in dts:
        for shape in SHAPES if dtype == "float32" else [(3, 5)]:
            add(
                name,
                [r(shape, dtype, low, high), r(shape, dtype, low, high)],
                None if dtype.startswith("int") and name == "rem" else fn,
            )
add(
    "div",
    [np.array([7, -7, 7, -7, 3], np.int32), np.array([2, 2, -2, -2, 0], np.int32)],
    lambda x, y: np.array([3, -3, -3, 3, 0]),
)
for name, fn in (
    ("eq", np.equal),
    ("ne", np.not_equal),
    ("lt", np.less),
    ("le", np.less_equal),
    ("gt", np.greater),
    ("ge", np.greater_equal),
):
    for dtype in ("float32", "int32", "bfloat16"):
        a = r((4, 3), dtype, -2, 2)
        b = np.where(RNG.random((4, 3)) < 0.3, a, r((4, 3), dtype, -2, 2))
        add(name, [a, b], fn)
for name, fn in (("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor)):
    for dtype in ("bool", "int32"):
        add(name, [r((5, 3), dtype, -9, 9), r((5, 3), dtype, -9, 9)], None)
add("not", [r((6,), "bool")], np.logical_not)
add("not", [r((6,), "int32", -9, 9)], None)
add("shift_left", [r((6,), "int32", 0, 99), r((6,), "int32", 0, 20)], None)
add("shift_right", [r((6,), "int32", -99, 99), r((6,), "int32", 0, 20)], None)
for dtype in ("float32", "int32", "bool", "bfloat16"):
    for shape in ((), (0,), (4, 3)):
        add("select", [r(shape, "bool"), r(shape, dtype), r(shape, dtype)], np.where)
for src, dst in (
    ("float32", "int32"),
    ("int32", "float32"),
    ("float32", "bfloat16"),
    ("bool", "float32"),
    ("float64", "float16"),
    ("float32", "bool"),
):
    add("convert_element_type", [r((3, 4), src, -50, 50)], lambda x: x, new_dtype=dst)
add(
    "convert_element_type",
    [np.array([1e10, -1e10, np.nan, 2.7], np.float32)],
    lambda x: np.array([2**31 - 1, -(2**31), 0, 2]),
    new_dtype="int32",
)

# reductions ----------------------------------------------------------------------------
NP_REDUCE = {
    "sum": np.sum,
    "max": np.max,
    "min": np.min,
    "prod": np.prod,
    "and": np.all,
    "or": np.any,
}
for kind in NP_REDUCE:
    for dtype in ("bool",) if kind in ("and", "or") else ("float32", "int32", "float16"):
        low, high = (0.5, 1.5) if kind == "prod" else (-3, 3)
        for shape, axes in (((7,), (0,)), ((3, 5), (1,)), ((2, 3, 4), (0, 2)), ((0, 3), (0,))):
            if kind in ("max", "min") and 0 in shape:
                continue
            x = r(shape, dtype, low, high)
            add(
                "reduce",
                [x],
                lambda v, k=kind, a=axes: NP_REDUCE[k](v, axis=a),
                kind=kind,
                axes=axes,
            )
for name, fn in (("argmax", np.argmax), ("argmin", np.argmin)):
    for dtype in ("float32", "int32", "bfloat16"):
        add(name, [r((4, 7), dtype)], lambda x, f=fn: f(x, axis=1), axis=1, index_dtype="int32")
    add(name, [r((5,), "float32")], lambda x, f=fn: f(x, axis=0), axis=0, index_dtype="int32")
for dtype in ("float32", "int32", "float64"):
    for axis, reverse in ((0, False), (1, True)):
        add(
            "cumsum",
            [r((3, 6), dtype)],
            lambda x, a=axis, rv=reverse: (
                np.flip(np.cumsum(np.flip(x, a) if rv else x, a), a) if rv else np.cumsum(x, a)
            ),
            axis=axis,
            reverse=reverse,
        )
for dtype in ("float32", "int32", "uint32"):
    for name, fn in (("sort", np.sort), ("argsort", np.argsort)):
        add(
            name, [r((3, 6), dtype, 0, 9)], lambda x, f=fn: f(x, axis=1, kind="stable"), dimension=1
        )

# shape ops -----------------------------------------------------------------------------
add(
    "constant",
    [],
    lambda: np.arange(6.0).reshape(2, 3),
    value=np.arange(6, dtype=np.float32).reshape(2, 3),
)
add("constant", [], lambda: np.array(2), value=np.array(2, np.int32), weak=True)
for dtype, shape, dim in (("int32", (4, 3), 0), ("float32", (4, 3), 1), ("int32", (0,), 0)):
    add(
        "iota",
        [],
        lambda s=shape, d=dim: np.indices(s)[d] if s else np.zeros(s),
        dtype=dtype,
        shape=shape,
        dimension=dim,
    )
for dtype in ("float32", "int32", "bool"):
    add(
        "broadcast_in_dim",
        [r((3,), dtype)],
        lambda x: np.broadcast_to(x[:, None], (3, 4)),
        shape=(3, 4),
        broadcast_dimensions=(0,),
    )
    add(
        "broadcast_in_dim",
        [r((1, 5), dtype)],
        lambda x: np.broadcast_to(x, (2, 3, 5)),
        shape=(2, 3, 5),
        broadcast_dimensions=(1, 2),
    )
add(
    "broadcast_in_dim",
    [r((), "float16")],
    lambda x: np.full((2, 0), x),
    shape=(2, 0),
    broadcast_dimensions=(),
)
for shape, new in (
    ((2, 3, 4), (6, 4)),
    ((6,), (2, 3)),
    ((), (1, 1)),
    ((0, 3), (3, 0)),
    ((5, 7), (35,)),
):
    add("reshape", [r(shape, "float32")], lambda x, n=new: np.reshape(x, n), new_sizes=new)
for perm in ((1, 0, 2), (2, 0, 1)):
    add(
        "transpose",
        [r((2, 3, 5), "float32")],
        lambda x, p=perm: np.transpose(x, p),
        permutation=perm,
    )
add("transpose", [r((3, 0), "int32")], lambda x: x.T, permutation=(1, 0))
for start, limit, stride in (
    ((1, 0), (4, 5), (2, 1)),
    ((0, 2), (7, 2), (3, 1)),
    ((0, 0), (7, 5), (1, 1)),
):
    add(
        "slice",
        [r((7, 5), "float32")],
        lambda x, s=start, lim=limit, st=stride: x[s[0] : lim[0] : st[0], s[1] : lim[1] : st[1]],
        start_indices=start,
        limit_indices=limit,
        strides=stride,
    )
for config in (((1, 2, 0), (0, 0, 0)), ((0, 0, 1), (2, -1, 0)), ((-1, 1, 2), (0, 0, 0))):
    add("pad", [r((3, 4), "float32"), np.array(9.0, np.float32)], None, padding_config=config)
add(
    "pad",
    [r((0,), "int32"), np.array(1, np.int32)],
    lambda x, v: np.ones(3),
    padding_config=((1, 2, 0),),
)
add(
    "pad",
    [r((3,), "float32"), np.array(0.0, np.float32)],
    lambda x, v: np.array([0, x[0], 0, x[1], 0, x[2], 0]),
    padding_config=((1, 1, 1),),
)
for dtype in ("float32", "int32"):
    add(
        "concatenate",
        [r((2, 3), dtype), r((4, 3), dtype), r((0, 3), dtype)],
        lambda *xs: np.concatenate(xs, 0),
        dimension=0,
    )
add(
    "concatenate",
    [r((2, 3), "bfloat16"), r((2, 1), "bfloat16")],
    lambda *xs: np.concatenate(xs, 1),
    dimension=1,
)
for dims in ((0,), (0, 1), ()):
    add("rev", [r((3, 4), "float32")], lambda x, d=dims: np.flip(x, d) if d else x, dimensions=dims)


def _replicated(shape: tuple[int, ...]) -> Any:
    from spmd.sharding import NamedSharding, P, make_mesh, sharding_attr

    sharding = NamedSharding(make_mesh((1,), ("d",)), P())
    return sharding_attr(sharding, TensorType(shape, "float32"))


add("sharding_constraint", [r((3, 4), "float32")], lambda x: x, sharding=_replicated((3, 4)))

# contraction ---------------------------------------------------------------------------
DOTS = [  # lhs shape, rhs shape, dimension numbers, formula
    ((3, 4), (4, 5), (((1,), (0,)), ((), ())), lambda a, b: a @ b),
    ((2, 3, 4), (2, 4, 5), (((2,), (1,)), ((0,), (0,))), lambda a, b: a @ b),
    ((4,), (4,), (((0,), (0,)), ((), ())), np.dot),
    ((3,), (5,), (((), ()), ((), ())), np.outer),
    ((4, 3), (5, 4), (((0,), (1,)), ((), ())), lambda a, b: a.T @ b.T),
    ((0, 3), (3, 2), (((1,), (0,)), ((), ())), lambda a, b: a @ b),
    (
        (2, 7, 3),
        (3, 7, 2),
        (((1,), (1,)), ((0,), (2,))),
        lambda a, b: np.einsum("bkm,nkb->bmn", a, b),
    ),
]
for lhs, rhs, dims, fn in DOTS:
    for dtype in ("float32",) if lhs != (3, 4) else ("float32", "float16", "bfloat16", "int32"):
        add(
            "dot_general",
            [r(lhs, dtype), r(rhs, dtype)],
            fn,
            dimension_numbers=dims,
            preferred_element_type=None,
        )
add(
    "dot_general",
    [r((3, 4), "bfloat16"), r((4, 2), "bfloat16")],
    lambda a, b: a @ b,
    dimension_numbers=(((1,), (0,)), ((), ())),
    preferred_element_type="float32",
)

# index ops -----------------------------------------------------------------------------
I32 = np.int32
for starts, sizes in (((1, 2), (2, 3)), ((5, -4), (2, 2)), ((0, 0), (4, 6)), ((2, 1), (0, 2))):
    add(
        "dynamic_slice",
        [r((4, 6), "float32"), I32(starts[0]), I32(starts[1])],
        lambda x, i, j, k=sizes: x[min(max(i, 0), 4 - k[0]) :][: k[0], min(max(j, 0), 6 - k[1]) :][
            :, : k[1]
        ],
        slice_sizes=sizes,
    )
add("dynamic_slice", [r((5,), "int32"), np.int64(3)], lambda x, i: x[3:5], slice_sizes=(2,))
for starts, upd in (((1, 2), (2, 3)), ((9, -3), (2, 2)), ((0, 0), (0, 6))):
    add(
        "dynamic_update_slice",
        [r((4, 6), "float32"), r(upd, "float32"), I32(starts[0]), I32(starts[1])],
        None,
    )
add(
    "dynamic_update_slice",
    [r((5,), "bool"), r((2,), "bool"), I32(1)],
    lambda x, u, i: np.concatenate([x[:1], u, x[3:]]),
)
for dtype, xs, idx, axis in (
    ("float32", (5, 3), (4,), 0),
    ("int32", (3, 6), (2, 2), 1),
    ("bfloat16", (4,), (), 0),
    ("float32", (3, 4), (0,), 1),
):
    indices = RNG.integers(-2, xs[axis] + 2, size=idx).astype(I32)
    add(
        "gather",
        [r(xs, dtype), indices],
        lambda x, i, a=axis: np.take(x, np.clip(i, 0, x.shape[a] - 1), axis=a),
        axis=axis,
    )
for dtype, xs, idx, axis in (
    ("float32", (5, 3), (6,), 0),
    ("int32", (3, 4), (2, 3), 1),
    ("float32", (4,), (0,), 0),
):
    indices = RNG.integers(0, xs[axis], size=idx).astype(I32)
    upd_shape = xs[:axis] + idx + xs[axis + 1 :]
    add("scatter_add", [r(xs, dtype), indices, r(upd_shape, dtype)], None, axis=axis)
add(
    "scatter_add",
    [np.zeros(3, np.float32), np.array([0, 2, 0, 0], I32), np.array([1, 2, 3, 4], np.float32)],
    lambda x, i, u: np.array([8, 0, 2]),
    axis=0,
)

for dtype in ("float32", "int32"):
    add("checkpoint_name", [r((3, 5), dtype)], lambda x: x, label="h")


# the tests -----------------------------------------------------------------------------


def _widen(a: np.ndarray) -> np.ndarray:
    return a.astype(F64) if a.dtype.kind == "f" or str(a.dtype) == "bfloat16" else a


def _run_jit(case: Case) -> Any:
    fn = spmd.jit(lambda *xs: bind(case.op, *xs, **case.attrs))
    return fn(*case.args)


@pytest.mark.parametrize("case", CASES, ids=[c.label(i) for i, c in enumerate(CASES)])
def test_op_matches_reference_and_formula_under_jit(case: Case) -> None:
    opdef = REGISTRY[case.op]
    out_type = opdef.infer(*[spmd.tracing.type_of(a) for a in case.args], **case.attrs)
    got = np.asarray(_run_jit(case))
    assert got.dtype == np_dtype(out_type.dtype), (got.dtype, out_type.dtype)
    assert got.shape == out_type.shape
    reference = np.asarray(opdef.reference(*case.args, **case.attrs))
    assert_close(got, reference.astype(got.dtype), out_type.dtype)
    if case.formula is not None:
        wide = [_widen(np.asarray(a)) for a in case.args]
        with np.errstate(all="ignore"):
            expected = np.asarray(case.formula(*wide))
        assert_close(got, expected, out_type.dtype, scale=4.0)


def test_every_registered_op_has_a_case() -> None:
    covered = {c.op for c in CASES}
    missing = sorted(set(REGISTRY) - covered - OWNED_ELSEWHERE)
    assert not missing, f"ops without a case in tests/core/test_ops.py: {missing}"


def test_eager_matches_jit_for_a_sample_of_cases() -> None:
    for case in CASES[::25]:
        eager = bind(case.op, *case.args, **case.attrs)
        assert_close(np.asarray(eager), np.asarray(_run_jit(case)))
