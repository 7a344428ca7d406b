"""Gradient-check cases for the registry's differentiable ops: float64 inputs, each away
from the op's kinks and poles, so central differences are accurate."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from spmd import control, lax
from spmd.tracing import bind

RNG = np.random.default_rng(1234)


@dataclass(frozen=True)
class Case:
    """fn(*args) -> an output or a tuple of outputs; args are float64 arrays."""

    op: str
    label: str
    fn: Callable[..., Any]
    args: tuple[np.ndarray, ...]
    context: Callable[[], Any] | None = None  # a context manager the case runs inside

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}" if self.label else self.op


def normal(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


def uniform(low: float, high: float, *shape: int) -> np.ndarray:
    return RNG.uniform(low, high, shape)


def apart(*shape: int) -> np.ndarray:
    """Values at least 0.1 apart from each other (no ties for max/min)."""
    n = int(np.prod(shape))
    return (RNG.permutation(n) * 0.3 + RNG.uniform(-0.1, 0.1, n) - n * 0.15).reshape(shape)


def signed_away_from_zero(*shape: int) -> np.ndarray:
    return uniform(0.3, 1.5, *shape) * RNG.choice([-1.0, 1.0], shape)


CASES: list[Case] = []


def case(
    op: str,
    fn: Callable[..., Any],
    *args: np.ndarray,
    label: str = "",
    context: Callable[[], Any] | None = None,
) -> None:
    CASES.append(Case(op, label, fn, tuple(np.asarray(a, np.float64) for a in args), context))


def _unary(name: str, x: np.ndarray) -> None:
    case(name, lambda a: bind(name, a), x)


for _name in ("neg", "exp", "expm1", "tanh", "logistic", "sin", "cos", "erf"):
    _unary(_name, normal(2, 3))
for _name in ("log", "log1p", "sqrt", "rsqrt"):
    _unary(_name, uniform(0.5, 2.0, 2, 3))
_unary("tan", uniform(-1.0, 1.0, 2, 3))
_unary("abs", signed_away_from_zero(2, 3))

for _name in ("add", "sub", "mul", "atan2"):
    case(_name, lambda a, b, n=_name: bind(n, a, b), normal(2, 3), normal(2, 3))
case("div", lambda a, b: bind("div", a, b), normal(2, 3), signed_away_from_zero(2, 3))
case("rem", lambda a, b: bind("rem", a, b), uniform(2.2, 2.8, 2, 3), uniform(1.0, 1.05, 2, 3))
case("pow", lambda a, b: bind("pow", a, b), uniform(0.5, 1.5, 2, 3), uniform(0.5, 2.0, 2, 3))
_pair = apart(2, 2, 3)
case("max", lambda a, b: bind("max", a, b), _pair[0], _pair[1])
case("min", lambda a, b: bind("min", a, b), _pair[0], _pair[1])
_pred = RNG.random((2, 3)) > 0.5
case("select", lambda a, b: bind("select", _pred, a, b), normal(2, 3), normal(2, 3))
case(
    "convert_element_type",
    lambda a: bind("convert_element_type", a, new_dtype="float64", weak=True),
    normal(3),
)

for _kind, _axes in (("sum", (1,)), ("max", (0,)), ("min", (0, 1)), ("prod", (1,))):
    _x = apart(3, 4) if _kind in ("max", "min") else signed_away_from_zero(3, 4)
    case("reduce", lambda a, k=_kind, ax=_axes: bind("reduce", a, kind=k, axes=ax), _x, label=_kind)
case("cumsum", lambda a: bind("cumsum", a, axis=1, reverse=False), normal(2, 4), label="fwd")
case("cumsum", lambda a: bind("cumsum", a, axis=0, reverse=True), normal(3, 2), label="rev")
case("sort", lambda a: bind("sort", a, dimension=1), normal(3, 4), label="rows")
case("sort", lambda a: bind("sort", a, dimension=0), normal(5), label="vector")

case(
    "broadcast_in_dim",
    lambda a: bind("broadcast_in_dim", a, shape=(3, 2, 4), broadcast_dimensions=(0, 2)),
    normal(1, 4),
)
case("reshape", lambda a: bind("reshape", a, new_sizes=(3, 2)), normal(2, 3))
case("transpose", lambda a: bind("transpose", a, permutation=(2, 0, 1)), normal(2, 3, 2))
case(
    "slice",
    lambda a: bind("slice", a, start_indices=(1, 0), limit_indices=(4, 5), strides=(2, 2)),
    normal(4, 5),
)
case(
    "pad",
    lambda a, v: bind("pad", a, v, padding_config=((1, -1, 1), (0, 2, 0))),
    normal(3, 2),
    normal(),
)
case(
    "concatenate",
    lambda a, b, c: bind("concatenate", a, b, c, dimension=1),
    normal(2, 1),
    normal(2, 3),
    normal(2, 2),
)
case("rev", lambda a: bind("rev", a, dimensions=(0, 1)), normal(2, 3))
case("sharding_constraint", lambda a: bind("sharding_constraint", a, sharding=None), normal(2, 3))
case(
    "dot_general",
    lambda a, b: lax.dot_general(a, b, (((2,), (1,)), ((0,), (0,)))),
    normal(2, 3, 4),
    normal(2, 4, 2),
    label="batched",
)
case(
    "dot_general",
    lambda a, b: lax.dot_general(a, b, (((0,), (1,)), ((), ()))),
    normal(3, 2),
    normal(4, 3),
    label="transposed",
)

# index ops (their engineer's suite covers edge cases; here only the VJP wiring)
_idx = np.array([4, 0, 4, 2], np.int32)
case("gather", lambda a: lax.gather(a, _idx, 0), normal(5, 3))
case("scatter_add", lambda a, u: lax.scatter_add(a, _idx, u, 0), normal(5, 3), normal(4, 3))
case("dynamic_slice", lambda a: lax.dynamic_slice(a, (np.int32(1), 2), (2, 2)), normal(4, 5))
case(
    "dynamic_update_slice",
    lambda a, u: lax.dynamic_update_slice(a, u, (np.int32(2), 1)),
    normal(4, 5),
    normal(2, 3),
)


# control flow ----------------------------------------------------------------------------


def _scan_case(w: Any, h0: Any, xs: Any, reverse: bool = False) -> Any:
    """A closure (w), a float and an int carry, xs, two ys (one int)."""

    def step(carry: Any, x: Any) -> Any:
        h, n = carry
        h = lax.tanh(lax.add(lax.mul(h, w), x))
        return (h, lax.add(n, 1)), (lax.mul(h, h), n)

    (h, n), (ys, ns) = control.scan(step, (h0, np.int32(0)), xs, reverse=reverse)
    return h, n, ys, ns


case("scan", _scan_case, normal(3), normal(3), normal(4, 3), label="rnn")
case(
    "scan",
    lambda w, h0, xs: _scan_case(w, h0, xs, True),
    normal(3),
    normal(3),
    normal(4, 3),
    label="reverse",
)


def _cond_case(flag: bool) -> Callable[..., Any]:
    def fn(w: Any, x: Any) -> Any:
        return control.cond(flag, lambda v: lax.sin(lax.mul(v, w)), lambda v: lax.mul(v, v), x)

    return fn


case("cond", _cond_case(True), normal(3), normal(3), label="true")
case("cond", _cond_case(False), normal(3), normal(3), label="false")


# collectives over a one-device group (inside a shard_map-like mesh scope) -----------------


def _mesh_scope() -> Any:
    from spmd.collective_api import mesh_axes

    return mesh_axes(("d",), (1,))


_ONE = {"axes": ("d",), "group_size": 1}
for _name, _attrs in (
    ("all_reduce", {"kind": "sum"}),
    ("all_gather", {"dim": 1}),
    ("reduce_scatter", {"dim": 0}),
    ("all_to_all", {"split_dim": 0, "concat_dim": 1}),
    ("collective_permute", {"pairs": ((0, 0),)}),
):
    case(
        _name,
        lambda a, n=_name, at=_attrs: bind(n, a, **_ONE, **at),
        normal(2, 3),
        context=_mesh_scope,
    )
case(
    "all_reduce",
    lambda a: bind("all_reduce", a, **_ONE, kind="max"),
    normal(2, 3),
    label="max",
    context=_mesh_scope,
)


# fused attention (the output; lse is an internal residual) and remat regions --------------

_ATTENTION = {"scale": 0.4, "has_mask": False}
case(
    "dot_product_attention",
    lambda q, k, v, b: bind(
        "dot_product_attention", q, k, v, b, is_causal=True, has_bias=True, **_ATTENTION
    )[0],
    normal(2, 5, 4, 3),
    normal(2, 6, 2, 3),
    normal(2, 6, 2, 3),
    normal(1, 4, 5, 6),
    label="gqa-causal-bias",
)
case(
    "dot_product_attention",
    lambda q, k, v: bind(
        "dot_product_attention", q, k, v, is_causal=False, has_bias=False, **_ATTENTION
    )[0],
    normal(4, 2, 3),
    normal(5, 2, 3),
    normal(5, 2, 3),
    label="unbatched",
)


def _remat_case(policy: Any) -> Callable[..., Any]:
    from spmd.remat import checkpoint_name, remat

    def body(x: Any, w: Any) -> Any:
        h = checkpoint_name(lax.tanh(lax.mul(x, w)), "h")
        return lax.sin(lax.mul(h, w))

    return lambda x, w: remat(body, policy=policy)(x, w)


for _policy in ("nothing", "dots", "names"):
    from spmd.ops.remat import Policy

    case("remat", _remat_case(Policy(_policy, ("h",))), normal(3, 4), normal(3, 4), label=_policy)
case("checkpoint_name", lambda a: bind("checkpoint_name", lax.sin(a), label="s"), normal(3))


def _attention_backward(q: Any, k: Any, v: Any, d_out: Any) -> Any:
    attrs = {"scale": 0.5, "is_causal": True, "has_bias": False, "has_mask": False}
    out, lse = bind("dot_product_attention", q, k, v, **attrs)
    return bind("dot_product_attention_bwd", q, k, v, out, lse, d_out, **attrs)


case(
    "dot_product_attention_bwd",
    _attention_backward,
    normal(1, 4, 2, 3),
    normal(1, 4, 1, 3),
    normal(1, 4, 1, 3),
    normal(1, 4, 2, 3),
    label="second-order",
)
