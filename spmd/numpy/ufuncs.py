"""Elementwise spmd.numpy functions: arithmetic, math, comparisons, logic (numpy semantics)."""

from __future__ import annotations

from typing import Any

from spmd import dtypes, lax
from spmd.errors import DTypeError
from spmd.numpy.core import asarray, float_type, promote_args
from spmd.ops import opdef as _opdef
from spmd.tracing import type_of


def _binary(name: str, prim: Any, form: _opdef.NumpyForm) -> Any:
    def fn(x: Any, y: Any) -> Any:
        a, b = promote_args(name, x, y)
        if form is _opdef.NumpyForm.INT_OR_BOOL and dtypes.is_float(type_of(a).dtype):
            raise DTypeError(f"{name} needs integer or bool inputs, got {type_of(a).dtype}")
        if form is _opdef.NumpyForm.FLOAT:
            a, b = float_type(a), float_type(b)
        return prim(a, b)

    fn.__name__ = name
    fn.__doc__ = f"numpy.{name}, elementwise with broadcasting and JAX's promotion."
    return fn


def _unary_float(name: str, prim: Any) -> Any:
    def fn(x: Any) -> Any:
        return prim(float_type(asarray(x)))

    fn.__name__ = name
    fn.__doc__ = f"numpy.{name} (integers are computed in float32)."
    return fn


def _ufunc(public: _opdef.Public) -> Any:
    """spmd.numpy's function for an elementwise op (named by its OpDef.public)."""
    prim = getattr(lax, public.lax)
    if public.arity == 2:
        return _binary(public.numpy, prim, public.numpy_form)
    return _unary_float(public.numpy, prim)


# add, multiply, exp, bitwise_and, ...: one function per registry entry naming one, so a
# new elementwise op needs no line here.
_UFUNCS = {
    d.public.numpy: _ufunc(d.public)
    for d in _opdef.REGISTRY.values()
    if d.public and d.public.numpy
}
globals().update(_UFUNCS)


def negative(x: Any) -> Any:
    return lax.neg(asarray(x))


def abs(x: Any) -> Any:
    x = asarray(x)
    return x if type_of(x).dtype == "bool" or dtypes.is_unsigned(type_of(x).dtype) else lax.abs(x)


absolute = abs


def sign(x: Any) -> Any:
    return lax.sign(asarray(x))


def round(x: Any, decimals: int = 0) -> Any:
    x = asarray(x)
    if not dtypes.is_float(type_of(x).dtype):
        return x
    if decimals == 0:
        return lax.round(x)
    scale = 10.0**decimals
    return lax.div(lax.round(lax.mul(x, scale)), scale)


def square(x: Any) -> Any:
    x = asarray(x)
    return lax.mul(x, x)


def reciprocal(x: Any) -> Any:
    return true_divide(1.0, x)


def log2(x: Any) -> Any:
    x = float_type(asarray(x))
    return lax.div(lax.log(x), float(__import__("math").log(2)))


def log10(x: Any) -> Any:
    x = float_type(asarray(x))
    return lax.div(lax.log(x), float(__import__("math").log(10)))


def true_divide(x: Any, y: Any) -> Any:
    a, b = promote_args("divide", x, y)
    return lax.div(float_type(a), float_type(b))


divide = true_divide


def floor_divide(x: Any, y: Any) -> Any:
    a, b = promote_args("floor_divide", x, y)
    if dtypes.is_float(type_of(a).dtype):
        return lax.floor(lax.div(a, b))
    q = lax.div(a, b)  # truncates toward zero; step down where the signs differ and r != 0
    r = lax.rem(a, b)
    fix = lax.bitwise_and(lax.ne(r, 0), lax.ne(lax.lt(r, 0), lax.lt(b, 0)))
    return lax.select(fix, lax.sub(q, 1), q)


def remainder(x: Any, y: Any) -> Any:
    a, b = promote_args("remainder", x, y)
    r = lax.rem(a, b)
    fix = lax.bitwise_and(lax.ne(r, 0), lax.ne(lax.lt(r, 0), lax.lt(b, 0)))
    return lax.select(fix, lax.add(r, b), r)


mod = remainder


def power(x: Any, y: Any) -> Any:
    if isinstance(y, int) and not isinstance(y, bool) and 0 <= y <= 4:
        base = asarray(x)
        out = lax.full_like(base, 1) if y == 0 else base
        for _ in range(max(y - 1, 0)):
            out = lax.mul(out, base)
        return out
    a, b = promote_args("power", x, y)
    return lax.pow(a, b)


def logical_not(x: Any) -> Any:
    x = asarray(x)
    return lax.bitwise_not(x if type_of(x).dtype == "bool" else lax.ne(x, 0))


def invert(x: Any) -> Any:
    return lax.bitwise_not(asarray(x))


def _logical(name: str, prim: Any) -> Any:
    def fn(x: Any, y: Any) -> Any:
        a, b = promote_args(name, x, y)
        if type_of(a).dtype != "bool":
            a, b = lax.ne(a, 0), lax.ne(b, 0)
        return prim(a, b)

    fn.__name__ = name
    return fn


logical_and = _logical("logical_and", lax.bitwise_and)
logical_or = _logical("logical_or", lax.bitwise_or)
logical_xor = _logical("logical_xor", lax.bitwise_xor)


def where(condition: Any, x: Any = None, y: Any = None) -> Any:
    """numpy.where(cond, x, y) (the one-argument form needs a static size, so is refused)."""
    if x is None or y is None:
        raise DTypeError(
            "where(condition) without x and y has a data-dependent shape",
            hint="use where(condition, x, y)",
        )
    c = asarray(condition)
    if type_of(c).dtype != "bool":
        c = lax.ne(c, 0)
    a, b = promote_args("where", x, y)
    c, a, b = promote_args_keep_dtype(c, a, b)
    return lax.select(c, a, b)


def promote_args_keep_dtype(*values: Any) -> list[Any]:
    from spmd.numpy.core import broadcast_values

    return broadcast_values("where", *values)


def clip(x: Any, a_min: Any = None, a_max: Any = None) -> Any:
    out = asarray(x)
    if a_min is not None:
        out = _UFUNCS["maximum"](out, a_min)
    if a_max is not None:
        out = _UFUNCS["minimum"](out, a_max)
    return out


def isnan(x: Any) -> Any:
    x = asarray(x)
    return lax.ne(x, x)


def isinf(x: Any) -> Any:
    x = float_type(asarray(x))
    return lax.eq(lax.abs(x), float("inf"))
