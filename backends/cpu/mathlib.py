"""Scalar semantics of every fusible elementwise op in LLVM IR, matching the numpy reference.

Floats compute in float (bfloat16/float16/float32) or double; ints in their own width
(numpy's wraparound); bool as i1. Only llvmlite.ir is used here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from llvmlite import ir

from spmd import dtypes

F32, F64 = ir.FloatType(), ir.DoubleType()
I1, I64 = ir.IntType(1), ir.IntType(64)
LIBM = ("erf", "log1p", "expm1", "tan", "atan2")
# A row: (math, compute-typed args, operand dtype, attrs, result dtype) -> the scalar result.
Row = Callable[..., ir.Value]


def compute_type(dtype: str) -> ir.Type:
    if dtype == "float64":
        return F64
    if dtypes.is_float(dtype):
        return F32
    if dtype == "bool":
        return I1
    return ir.IntType(8 * dtypes.itemsize(dtype))


def constant(dtype: str, value: Any) -> ir.Constant:
    ty = compute_type(dtype)
    if isinstance(ty, ir.IntType):
        return ir.Constant(ty, int(value) & ((1 << ty.width) - 1))
    return ir.Constant(ty, float(value))


class Math:
    """Emits one op at a time into a builder; caches intrinsic and libm declarations."""

    def __init__(self, module: ir.Module, builder: ir.IRBuilder) -> None:
        self.module = module
        self.b = builder

    def intrinsic(self, name: str, ty: ir.Type, *args: ir.Value) -> ir.Value:
        suffix = "f64" if ty == F64 else "f32"
        full = f"llvm.{name}.{suffix}"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty] * len(args)), full)
        return self.b.call(fn, args)

    def libm(self, name: str, ty: ir.Type, *args: ir.Value) -> ir.Value:
        full = name if ty == F64 else name + "f"
        fn = self.module.globals.get(full)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(ty, [ty] * len(args)), full)
        return self.b.call(fn, args)

    def muladd(self, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
        """x * y + z, fused where the CPU has FMA (only inside our own approximations: the
        ops the user wrote round like the reference)."""
        return self.intrinsic("fmuladd", x.type, x, y, z)

    # -- float helpers -------------------------------------------------------------------
    def _expm1_reduced(self, x: ir.Value) -> tuple[ir.Value, ir.Value]:
        """float32 x = k ln2 + r, |r| <= ln2/2: returns (expm1(r), k << 23 as i32 bits).

        k is rounded by adding 1.5 * 2**23 (its low mantissa bits then hold k, two's
        complement); expm1(r) = r + r^2 q(r), q a degree-4 least-squares fit (relative error
        1e-8 on the interval). Garbage for |x| > 2**20; the callers select those lanes away."""
        b, c, i32 = self.b, lambda v: ir.Constant(F32, v), ir.IntType(32)
        shifted = self.muladd(x, c(1.4426950408889634), c(12582912.0))
        k = b.fsub(shifted, c(12582912.0))
        r = self.muladd(k, c(-0.693145751953125), x)
        r = self.muladd(k, c(-1.4286068202862268e-06), r)
        q = c(0.0013933650916442275)
        for coef in (0.008363178931176662, 0.04166646674275398, 0.16666576266288757, 0.5):
            q = self.muladd(q, r, c(coef))
        minus_one = self.muladd(q, b.fmul(r, r), r)
        return minus_one, b.shl(b.bitcast(shifted, i32), ir.Constant(i32, 23))

    def exp(self, x: ir.Value) -> ir.Value:
        """exp; float32 through a vectorizable polynomial (~1 ulp), double via libm.

        x is clamped to [-104, 89] (NaN passes through: the compares are ordered), where k is
        in [-150, 128]; 2^k is applied as p * 2^(k -+ 64) * 2^(+-64), so both factors and the
        intermediate are normal: overflow to inf, subnormal results and underflow to 0 come
        out of the last multiply, rounded once, with no per-case selects."""
        if x.type == F64:
            return self.intrinsic("exp", F64, x)
        b, c, i32 = self.b, lambda v: ir.Constant(F32, v), ir.IntType(32)
        x = b.select(b.fcmp_ordered("<", x, c(-104.0)), c(-104.0), x)
        x = b.select(b.fcmp_ordered(">", x, c(89.0)), c(89.0), x)
        minus_one, k_bits = self._expm1_reduced(x)
        negative = b.fcmp_ordered("<", x, c(0.0))
        bias = b.select(
            negative, ir.Constant(i32, (127 + 64) << 23), ir.Constant(i32, (127 - 64) << 23)
        )
        scale = b.bitcast(b.add(k_bits, bias), F32)
        y = self.muladd(minus_one, scale, scale)  # exact product: one rounding either way
        return b.fmul(y, b.select(negative, c(2.0**-64), c(2.0**64)))

    def tanh(self, x: ir.Value) -> ir.Value:
        """tanh(|x|) = e / (e + 2) with e = expm1(2|x|) (no cancellation near 0), sign of x."""
        if x.type == F64:
            return self.libm("tanh", F64, x)
        b, c, i32 = self.b, lambda v: ir.Constant(F32, v), ir.IntType(32)
        ax = self.intrinsic("fabs", F32, x)
        ax = b.select(b.fcmp_ordered(">", ax, c(10.0)), c(10.0), ax)  # tanh(10) rounds to 1
        minus_one, k_bits = self._expm1_reduced(b.fadd(ax, ax))
        scale = b.bitcast(b.add(k_bits, ir.Constant(i32, 127 << 23)), F32)
        e = self.muladd(scale, minus_one, b.fsub(scale, c(1.0)))
        return self.intrinsic("copysign", F32, b.fdiv(e, b.fadd(e, c(2.0))), x)

    def maxmin(self, x: ir.Value, y: ir.Value, is_max: bool, unsigned: bool) -> ir.Value:
        """np.maximum / np.minimum: NaN in either operand propagates."""
        b = self.b
        if isinstance(x.type, ir.IntType):
            op = ">" if is_max else "<"
            cmp = b.icmp_unsigned(op, x, y) if unsigned or x.type == I1 else b.icmp_signed(op, x, y)
            return b.select(cmp, x, y)
        return self.intrinsic("maximum" if is_max else "minimum", x.type, x, y)


def _int_div(m: Math, x: ir.Value, y: ir.Value, unsigned: bool) -> ir.Value:
    """Truncating division (lax.div, C's sdiv), 0 where y == 0 like the reference; x / -1
    is negation (wrapping at INT_MIN, where sdiv would be undefined)."""
    b = m.b
    zero, one = ir.Constant(x.type, 0), ir.Constant(x.type, 1)
    is_zero = b.icmp_unsigned("==", y, zero)
    if unsigned:
        return b.select(is_zero, zero, b.udiv(x, b.select(is_zero, one, y)))
    minus_one = b.icmp_signed("==", y, ir.Constant(x.type, -1))
    safe = b.select(b.or_(is_zero, minus_one), one, y)
    q = b.select(minus_one, b.neg(x), b.sdiv(x, safe))
    return b.select(is_zero, zero, q)


def _int_rem(m: Math, x: ir.Value, y: ir.Value, unsigned: bool) -> ir.Value:
    b = m.b
    zero, one = ir.Constant(x.type, 0), ir.Constant(x.type, 1)
    bad = b.icmp_unsigned("==", y, zero)
    if not unsigned:
        bad = b.or_(bad, b.icmp_signed("==", y, ir.Constant(x.type, -1)))
    safe = b.select(bad, one, y)
    r = b.urem(x, safe) if unsigned else b.srem(x, safe)
    return b.select(bad, zero, r)


def _shift(m: Math, x: ir.Value, y: ir.Value, left: bool, unsigned: bool) -> ir.Value:
    b = m.b
    width = ir.Constant(x.type, x.type.width)
    inside = b.icmp_unsigned("<", y, width)
    safe = b.select(inside, y, ir.Constant(x.type, 0))
    zero = ir.Constant(x.type, 0)
    if left:
        return b.select(inside, b.shl(x, safe), zero)
    if unsigned:
        return b.select(inside, b.lshr(x, safe), zero)
    fill = b.select(b.icmp_signed("<", x, zero), ir.Constant(x.type, -1), zero)
    return b.select(inside, b.ashr(x, safe), fill)


def _compare(sym: str, unordered: bool = False) -> Row:
    """A comparison; `unordered`: true when a float operand is NaN (ne, as numpy)."""

    def row(m: Math, args: list[ir.Value], in_dtype: str, *_: Any) -> ir.Value:
        x, y = args
        if isinstance(x.type, ir.IntType):
            if dtypes.is_unsigned(in_dtype) or x.type == I1:
                return m.b.icmp_unsigned(sym, x, y)
            return m.b.icmp_signed(sym, x, y)
        return (m.b.fcmp_unordered if unordered else m.b.fcmp_ordered)(sym, x, y)

    return row


def _sign(m: Math, x: ir.Value, unsigned: bool) -> ir.Value:
    b = m.b
    if isinstance(x.type, ir.IntType):
        zero = ir.Constant(x.type, 0)
        pos = b.zext(
            b.icmp_unsigned("!=", x, zero) if unsigned else b.icmp_signed(">", x, zero), x.type
        )
        if unsigned or x.type == I1:
            return pos if x.type != I1 else x
        return b.sub(pos, b.zext(b.icmp_signed("<", x, zero), x.type))
    one, zero = ir.Constant(x.type, 1.0), ir.Constant(x.type, 0.0)
    s = b.select(
        b.fcmp_ordered(">", x, zero),
        one,
        b.select(b.fcmp_ordered("<", x, zero), ir.Constant(x.type, -1.0), zero),
    )
    return b.select(b.fcmp_unordered("uno", x, x), x, s)


def convert(m: Math, x: ir.Value, src: str, dst: str) -> ir.Value:
    """convert_element_type: floats to ints truncate and saturate (NaN -> 0) like the reference."""
    b, target = m.b, compute_type(dst)
    if dst == "bool":
        if isinstance(x.type, ir.IntType):
            return b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
        return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))
    if isinstance(x.type, ir.IntType) and isinstance(target, ir.IntType):
        if x.type.width == target.width:
            return x
        if x.type.width > target.width:
            return b.trunc(x, target)
        widen = b.zext if dtypes.is_unsigned(src) or src == "bool" else b.sext
        return widen(x, target)
    if isinstance(x.type, ir.IntType):
        to_float = b.uitofp if dtypes.is_unsigned(src) or src == "bool" else b.sitofp
        return to_float(x, target)
    if isinstance(target, ir.IntType):
        kind = "fptoui" if dtypes.is_unsigned(dst) else "fptosi"
        name = f"llvm.{kind}.sat.i{target.width}.{'f64' if x.type == F64 else 'f32'}"
        fn = m.module.globals.get(name) or ir.Function(
            m.module, ir.FunctionType(target, [x.type]), name
        )
        return b.call(fn, [x])
    if x.type == target:
        return x
    if dst == "float16" and x.type == F64:  # numpy rounds once (bfloat16 goes via float32)
        return b.fpext(b.fptrunc(_to_float32_odd(m, x), ir.HalfType()), target)
    return b.fpext(x, target) if target == F64 else b.fptrunc(x, target)


def _to_float32_odd(m: Math, x: ir.Value) -> ir.Value:
    """float64 -> float32 rounded to odd, so a second rounding to float16 equals one direct
    rounding (LLVM's direct fptrunc f64->f16 is a compiler-rt call MCJIT cannot resolve)."""
    b, i32 = m.b, ir.IntType(32)
    near = b.fptrunc(x, F32)
    wide = b.fpext(near, F64)
    bits = b.bitcast(near, i32)
    over = b.fcmp_ordered(">", m.intrinsic("fabs", F64, wide), m.intrinsic("fabs", F64, x))
    toward_zero = b.select(over, b.sub(bits, ir.Constant(i32, 1)), bits)
    inexact = b.fcmp_ordered("!=", wide, x)
    odd = b.select(inexact, b.or_(toward_zero, ir.Constant(i32, 1)), bits)
    return b.bitcast(odd, F32)


def emit(
    m: Math, name: str, args: list[ir.Value], in_dtype: str, attrs: dict[str, Any], out_dtype: str
) -> ir.Value:
    """One elementwise op on compute-typed scalars: its row of SCALAR."""
    return SCALAR[name](m, args, in_dtype, attrs, out_dtype)


def _unary_intrinsic(name: str) -> Callable[..., ir.Value]:
    return lambda m, x: m.intrinsic(name, x.type, x)


def _libm(name: str) -> Callable[..., ir.Value]:
    return lambda m, *xs: m.libm(name, xs[0].type, *xs)


def _one(x: ir.Value) -> ir.Constant:
    return ir.Constant(x.type, 1.0)


_FLOAT: dict[str, Callable[..., ir.Value]] = {
    "neg": lambda m, x: m.b.fneg(x),
    "exp": lambda m, x: m.exp(x),
    "log": _unary_intrinsic("log"),
    "sin": _unary_intrinsic("sin"),
    "cos": _unary_intrinsic("cos"),
    "sqrt": _unary_intrinsic("sqrt"),
    "floor": _unary_intrinsic("floor"),
    "ceil": _unary_intrinsic("ceil"),
    "round": _unary_intrinsic("roundeven"),
    "abs": _unary_intrinsic("fabs"),
    "rsqrt": lambda m, x: m.b.fdiv(_one(x), m.intrinsic("sqrt", x.type, x)),
    "tanh": lambda m, x: m.tanh(x),
    "logistic": lambda m, x: m.b.fdiv(_one(x), m.b.fadd(_one(x), m.exp(m.b.fneg(x)))),
    "sign": lambda m, x: _sign(m, x, False),
    "is_finite": lambda m, x: m.b.fcmp_ordered(
        "!=", m.intrinsic("fabs", x.type, x), ir.Constant(x.type, float("inf"))
    ),
    "add": lambda m, x, y: m.b.fadd(x, y),
    "sub": lambda m, x, y: m.b.fsub(x, y),
    "mul": lambda m, x, y: m.b.fmul(x, y),
    "div": lambda m, x, y: m.b.fdiv(x, y),
    "rem": lambda m, x, y: m.b.frem(x, y),
    "pow": lambda m, x, y: m.intrinsic("pow", x.type, x, y),
    **{n: _libm(n) for n in LIBM},
}

_INT: dict[str, Callable[..., ir.Value]] = {
    "neg": lambda m, x, u: m.b.neg(x),
    "abs": lambda m, x, u: (
        x if u else m.b.select(m.b.icmp_signed("<", x, ir.Constant(x.type, 0)), m.b.neg(x), x)
    ),
    "sign": lambda m, x, u: _sign(m, x, u),
    "add": lambda m, x, y, u: m.b.add(x, y),
    "sub": lambda m, x, y, u: m.b.sub(x, y),
    "mul": lambda m, x, y, u: m.b.mul(x, y),
    "div": lambda m, x, y, u: _int_div(m, x, y, u),
    "rem": lambda m, x, y, u: _int_rem(m, x, y, u),
    "and": lambda m, x, y, u: m.b.and_(x, y),
    "or": lambda m, x, y, u: m.b.or_(x, y),
    "xor": lambda m, x, y, u: m.b.xor(x, y),
    "not": lambda m, x, u: m.b.not_(x),
    "shift_left": lambda m, x, y, u: _shift(m, x, y, True, u),
    "shift_right": lambda m, x, y, u: _shift(m, x, y, False, u),
}


def _by_type(name: str, on_bool: Callable[..., ir.Value] | None = None) -> Row:
    """Integer operands through _INT (bool ones through on_bool where given), floats
    through _FLOAT."""
    on_float, on_int = _FLOAT.get(name), _INT.get(name)

    def row(m: Math, args: list[ir.Value], in_dtype: str, *_: Any) -> ir.Value:
        x = args[0]
        if on_bool is not None and x.type == I1:
            return on_bool(m.b, *args)
        if isinstance(x.type, ir.IntType):
            return on_int(m, *args, dtypes.is_unsigned(in_dtype))
        return on_float(m, *args)

    return row


def _maxmin(is_max: bool) -> Row:
    return lambda m, args, in_dtype, *_: m.maxmin(*args, is_max, dtypes.is_unsigned(in_dtype))


# The CPU backend's table of scalar code: one row per elementwise op (Trait.ELEMENTWISE).
SCALAR: dict[str, Row] = {
    **{name: _by_type(name) for name in sorted(set(_FLOAT) | set(_INT))},
    "add": _by_type("add", lambda b, x, y: b.or_(x, y)),
    "mul": _by_type("mul", lambda b, x, y: b.and_(x, y)),
    "max": _maxmin(True),
    "min": _maxmin(False),
    "eq": _compare("=="),
    "ne": _compare("!=", unordered=True),
    "lt": _compare("<"),
    "le": _compare("<="),
    "gt": _compare(">"),
    "ge": _compare(">="),
    "select": lambda m, args, *_: m.b.select(*args),
    "convert_element_type": lambda m, args, in_dtype, attrs, out_dtype: convert(
        m, args[0], in_dtype, out_dtype
    ),
    "stop_gradient": lambda m, args, *_: args[0],
}
