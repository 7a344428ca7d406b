"""Elementwise ops: unary math, binary arithmetic, comparisons, select, convert.

Sharding rule: every operand dim and the result dim are the same factor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from spmd import dtypes
from spmd import primitives as prim
from spmd.errors import DTypeError, ShapeError
from spmd.ir.types import TensorType
from spmd.ops.common import letters, need_float, same_dtypes, same_shapes
from spmd.ops.opdef import ZERO_GRAD, Factors, Linearity, NumpyForm, OpDef, Public, Trait


def elementwise_factors(*types: TensorType, **_: Any) -> Factors:
    dims = tuple(letters(types[0].ndim)) if types else ()
    return Factors(tuple(dims for _ in types), (dims,))


def _unary_type(float_only: bool) -> Callable[..., TensorType]:
    def infer(x: TensorType, **_: Any) -> TensorType:
        if float_only:
            need_float("this op", x)
        return x

    return infer


def _binary_type(name: str, result_dtype: str | None = None) -> Callable[..., TensorType]:
    def infer(x: TensorType, y: TensorType, **_: Any) -> TensorType:
        same_shapes(name, x, y)
        same_dtypes(name, x, y)
        if result_dtype is not None:
            return TensorType(x.shape, result_dtype)
        return TensorType(x.shape, x.dtype, x.weak and y.weak)

    return infer


def _quiet(fn: Callable[..., Any]) -> Callable[..., Any]:
    """numpy semantics (inf, nan, wraparound) without numpy's warnings."""

    def run(*args: Any, **_: Any) -> Any:
        with np.errstate(all="ignore"):
            return fn(*args)

    return run


def _unary(
    name: str,
    ref: Callable[..., Any],
    vjp: Any,
    float_only: bool = True,
    linear: Linearity = Linearity.NONE,
    numpy: str = "",
) -> OpDef:
    """spmd.lax.<name> too, and spmd.numpy.<numpy> (integers computed in float32) if named."""
    public = Public(name, 1, numpy, NumpyForm.FLOAT)
    return OpDef(
        name,
        _unary_type(float_only),
        _quiet(ref),
        vjp,
        elementwise_factors,
        linear=linear,
        public=public,
    )


def _public(name: str, numpy: str = "", form: NumpyForm = NumpyForm.PROMOTE) -> Public:
    """A binary op's spmd.lax.<name> (and spmd.numpy.<numpy>, if named)."""
    return Public(name, 2, numpy, form)


def _int_div(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Truncating integer division (lax.div), 0 where y == 0 like numpy."""
    if dtypes.is_float(dtypes.canonical(x.dtype)):
        return x / y
    safe = np.where(y == 0, 1, y)
    q = np.floor_divide(x, safe)  # floor, then step toward zero where it rounded down
    q = np.where((np.remainder(x, safe) != 0) & ((x < 0) != (safe < 0)), q + 1, q)
    return np.where(y == 0, 0, q).astype(x.dtype)


def _pow_vjp(ct: Any, x: Any, y: Any, *, out: Any) -> tuple[Any, Any]:
    dx = prim.mul(ct, prim.mul(y, prim.pow(x, prim.sub(y, 1.0))))
    safe_log = prim.select(prim.eq(x, 0.0), prim.zeros_like(x), prim.log(prim.abs(x)))
    return dx, prim.mul(ct, prim.mul(out, safe_log))


def _minmax_vjp(pick_first: str) -> Callable[..., tuple[Any, Any]]:
    """Ties split the cotangent in half between both operands (as JAX does)."""

    def vjp(ct: Any, x: Any, y: Any, *, out: Any) -> tuple[Any, Any]:
        first = getattr(prim, pick_first)(x, y)
        half = prim.mul(ct, 0.5)
        zero = prim.zeros_like(ct)
        tie = prim.eq(x, y)
        dx = prim.select(tie, half, prim.select(first, ct, zero))
        dy = prim.select(tie, half, prim.select(first, zero, ct))
        return dx, dy

    return vjp


def _convert_type(x: TensorType, *, new_dtype: str, weak: bool = False) -> TensorType:
    return TensorType(x.shape, new_dtype, weak)


def _convert_ref(x: np.ndarray, *, new_dtype: str, weak: bool = False) -> np.ndarray:
    target = dtypes.to_numpy(new_dtype)
    with np.errstate(all="ignore"):
        if dtypes.is_int(new_dtype) and dtypes.is_float(dtypes.canonical(x.dtype)):
            # Out-of-range floats: saturate like XLA instead of numpy's undefined cast.
            info = np.iinfo(target)
            wide = np.nan_to_num(np.trunc(x.astype(np.float64)), posinf=info.max, neginf=info.min)
            out = np.clip(wide, info.min, info.max).astype(target)
            # float(info.max) rounds up past the range (2**31 in float32, 2**63 in float64).
            return np.where(wide >= float(info.max), info.max, out).astype(target)
        if new_dtype == "bool":
            return x != 0
        if new_dtype == "bfloat16" and x.dtype == np.float64:
            # XLA (so JAX) converts f64 -> bf16 through f32 (elemental_ir_emitter: "Cast to F32
            # first"), rounding twice; ml_dtypes >= 0.7 rounds once, older ones through f32.
            return x.astype(np.float32).astype(target)
        return x.astype(target)


def _convert_vjp(ct: Any, x: Any, *, out: Any, new_dtype: str, weak: bool = False) -> Any:
    if not dtypes.is_float(x.type.dtype):
        return None
    return prim.convert_element_type(ct, x.type.dtype, x.type.weak)


def _select_type(p: TensorType, a: TensorType, b: TensorType) -> TensorType:
    same_shapes("select", p, a, b)
    same_dtypes("select", a, b)
    if p.dtype != "bool":
        raise DTypeError(
            f"select needs a bool predicate, got {p.dtype}", hint="compare first, e.g. x > 0"
        )
    return TensorType(a.shape, a.dtype, a.weak and b.weak)


def _select_vjp(ct: Any, p: Any, a: Any, b: Any, *, out: Any) -> tuple[Any, Any, Any]:
    zero = prim.zeros_like(ct)
    return None, prim.select(p, ct, zero), prim.select(p, zero, ct)


def _bool_or_int(name: str, unary: bool = False) -> Callable[..., TensorType]:
    def infer(x: TensorType, y: TensorType | None = None, **_: Any) -> TensorType:
        if (y is None) != unary:
            raise ShapeError(f"{name} takes {1 if unary else 2} operand(s)")
        types = (x,) if y is None else (x, y)
        same_shapes(name, *types)
        same_dtypes(name, *types)
        if dtypes.is_float(x.dtype):
            raise DTypeError(f"{name} needs bool or integer operands, got {x.dtype}")
        return TensorType(x.shape, x.dtype, all(t.weak for t in types))

    return infer


def _mul(*a: Any) -> Any:
    return prim.mul(*a)


OPS = [
    _unary("neg", np.negative, lambda ct, x, *, out: prim.neg(ct), False, linear=Linearity.JOINT),
    _unary("exp", np.exp, lambda ct, x, *, out: _mul(ct, out), numpy="exp"),
    _unary("log", np.log, lambda ct, x, *, out: prim.div(ct, x), numpy="log"),
    _unary("log1p", np.log1p, lambda ct, x, *, out: prim.div(ct, prim.add(x, 1.0)), numpy="log1p"),
    _unary("expm1", np.expm1, lambda ct, x, *, out: _mul(ct, prim.add(out, 1.0)), numpy="expm1"),
    _unary(
        "tanh",
        np.tanh,
        lambda ct, x, *, out: _mul(ct, prim.sub(1.0, _mul(out, out))),
        numpy="tanh",
    ),
    _unary(
        "logistic",
        lambda x: 1 / (1 + np.exp(-x)),
        lambda ct, x, *, out: _mul(ct, _mul(out, prim.sub(1.0, out))),
    ),
    _unary("sin", np.sin, lambda ct, x, *, out: _mul(ct, prim.cos(x)), numpy="sin"),
    _unary("cos", np.cos, lambda ct, x, *, out: prim.neg(_mul(ct, prim.sin(x))), numpy="cos"),
    _unary(
        "tan", np.tan, lambda ct, x, *, out: _mul(ct, prim.add(1.0, _mul(out, out))), numpy="tan"
    ),
    _unary("sqrt", np.sqrt, lambda ct, x, *, out: prim.div(_mul(ct, 0.5), out), numpy="sqrt"),
    _unary(
        "rsqrt",
        lambda x: 1 / np.sqrt(x),
        lambda ct, x, *, out: _mul(ct, _mul(prim.div(out, x), -0.5)),
    ),
    _unary(
        "erf",
        lambda x: _erf(x),
        lambda ct, x, *, out: _mul(ct, _mul(prim.exp(prim.neg(_mul(x, x))), 2 / np.sqrt(np.pi))),
    ),
    _unary("abs", np.abs, lambda ct, x, *, out: _mul(ct, prim.sign(x)), False),
    _unary("sign", np.sign, ZERO_GRAD, False),
    _unary("floor", np.floor, ZERO_GRAD, numpy="floor"),
    _unary("ceil", np.ceil, ZERO_GRAD, numpy="ceil"),
    _unary("round", np.round, ZERO_GRAD),
    OpDef(
        "is_finite",
        lambda x: (need_float("is_finite", x), x.with_dtype("bool"))[1],
        np.isfinite,
        ZERO_GRAD,
        elementwise_factors,
        public=Public("is_finite", 1, "isfinite", NumpyForm.FLOAT),
    ),
    OpDef(
        "add",
        _binary_type("add"),
        _quiet(np.add),
        lambda ct, x, y, *, out: (ct, ct),
        elementwise_factors,
        linear=Linearity.JOINT,
        public=_public("add", "add"),
    ),
    OpDef(
        "sub",
        _binary_type("sub"),
        _quiet(np.subtract),
        lambda ct, x, y, *, out: (ct, prim.neg(ct)),
        elementwise_factors,
        linear=Linearity.JOINT,
        public=_public("sub", "subtract"),
    ),
    OpDef(
        "mul",
        _binary_type("mul"),
        _quiet(np.multiply),
        lambda ct, x, y, *, out: (_mul(ct, y), _mul(ct, x)),
        elementwise_factors,
        linear=Linearity.EACH,
        public=_public("mul", "multiply"),
    ),
    OpDef(
        "div",
        _binary_type("div"),
        _quiet(_int_div),
        lambda ct, x, y, *, out: (prim.div(ct, y), prim.neg(prim.div(_mul(ct, out), y))),
        elementwise_factors,
        linear=Linearity.FIRST,
        public=_public("div"),
    ),
    OpDef(
        "rem",
        _binary_type("rem"),
        _quiet(np.fmod),
        lambda ct, x, y, *, out: (
            ct,
            _mul(prim.neg(ct), prim.round(prim.div(prim.sub(x, out), y))),
        ),
        elementwise_factors,
        public=_public("rem"),
    ),
    OpDef(
        "pow",
        _binary_type("pow"),
        _quiet(np.power),
        _pow_vjp,
        elementwise_factors,
        public=_public("pow"),
    ),
    OpDef(
        "atan2",
        _binary_type("atan2"),
        _quiet(np.arctan2),
        lambda ct, x, y, *, out: _atan2_vjp(ct, x, y),
        elementwise_factors,
        public=_public("atan2", "arctan2", NumpyForm.FLOAT),
    ),
    OpDef(
        "max",
        _binary_type("max"),
        _quiet(np.maximum),
        _minmax_vjp("gt"),
        elementwise_factors,
        public=_public("max", "maximum"),
    ),
    OpDef(
        "min",
        _binary_type("min"),
        _quiet(np.minimum),
        _minmax_vjp("lt"),
        elementwise_factors,
        public=_public("min", "minimum"),
    ),
    *(
        OpDef(n, _binary_type(n, "bool"), _quiet(f), ZERO_GRAD, elementwise_factors, public=p)
        for n, f, p in (
            ("eq", np.equal, _public("eq", "equal")),
            ("ne", np.not_equal, _public("ne", "not_equal")),
            ("lt", np.less, _public("lt", "less")),
            ("le", np.less_equal, _public("le", "less_equal")),
            ("gt", np.greater, _public("gt", "greater")),
            ("ge", np.greater_equal, _public("ge", "greater_equal")),
        )
    ),
    *(
        OpDef(
            n,
            _bool_or_int(n),
            f,
            ZERO_GRAD,
            elementwise_factors,
            public=Public(f"bitwise_{n}", 2, f"bitwise_{n}", NumpyForm.INT_OR_BOOL),
        )
        for n, f in (("and", np.bitwise_and), ("or", np.bitwise_or), ("xor", np.bitwise_xor))
    ),
    OpDef(
        "not",
        _bool_or_int("not", unary=True),
        np.invert,
        ZERO_GRAD,
        elementwise_factors,
        public=Public("bitwise_not", 1),
    ),
    OpDef(
        "shift_left",
        _bool_or_int("shift_left"),
        _quiet(np.left_shift),
        ZERO_GRAD,
        elementwise_factors,
        public=_public("shift_left"),
    ),
    OpDef(
        "shift_right",
        _bool_or_int("shift_right"),
        _quiet(np.right_shift),
        ZERO_GRAD,
        elementwise_factors,
        public=_public("shift_right"),
    ),
    OpDef(
        "select",
        _select_type,
        np.where,
        _select_vjp,
        elementwise_factors,
        linear=Linearity.BRANCHES,
    ),
    OpDef(
        "convert_element_type",
        _convert_type,
        _convert_ref,
        _convert_vjp,
        elementwise_factors,
        linear=Linearity.JOINT,
    ),
    OpDef(
        "stop_gradient",
        _unary_type(False),
        lambda x: x,
        ZERO_GRAD,
        elementwise_factors,
        linear=Linearity.JOINT,
    ),
]
# Every op of this family; each batches over a leading axis of all its operands.
OPS = [replace(d, traits=Trait.ELEMENTWISE, shared_operands=()) for d in OPS]


def _atan2_vjp(ct: Any, x: Any, y: Any) -> tuple[Any, Any]:
    denom = prim.add(_mul(x, x), _mul(y, y))
    return prim.div(_mul(ct, y), denom), prim.neg(prim.div(_mul(ct, x), denom))


def _erf(x: np.ndarray) -> np.ndarray:
    from math import erf

    flat = np.asarray(x, dtype=np.float64).ravel()
    return np.array([erf(v) for v in flat]).reshape(np.shape(x)).astype(x.dtype)
