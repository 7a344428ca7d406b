"""Scalar semantics of every fusible elementwise op as CUDA C expressions, matching the numpy
reference: integer wraparound through unsigned arithmetic, division by zero gives 0, NaN
propagates through max/min, float-to-int saturates; bfloat16/float16 compute in float and
round after every op. Host C++ compiles the same text (see HOST_SHIM in the tests).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from spmd import dtypes

C_TYPE = {
    "bool": "bool",
    "int8": "signed char",
    "int16": "short",
    "int32": "int",
    "int64": "long long",
    "uint8": "unsigned char",
    "uint16": "unsigned short",
    "uint32": "unsigned int",
    "uint64": "unsigned long long",
    "float32": "float",
    "float64": "double",
    "bfloat16": "float",
    "float16": "float",
}
STORAGE_TYPE = {**C_TYPE, "bool": "unsigned char", "bfloat16": "__nv_bfloat16", "float16": "__half"}
HALF = ("bfloat16", "float16")

# Device-independent helpers; SPMD_FN, __int_as_float and __longlong_as_double come from
# the CUDA prelude (or a host shim).
HELPERS = r"""
template <typename T, int N> struct alignas(sizeof(T) * N) spmd_pack { T v[N]; };
SPMD_FN float spmd_maxf(float x, float y) { return x != x ? x : (y != y ? y : (x > y ? x : y)); }
SPMD_FN float spmd_minf(float x, float y) { return x != x ? x : (y != y ? y : (x < y ? x : y)); }
SPMD_FN double spmd_maxd(double x, double y) { return x != x ? x : (y != y ? y : (x > y ? x : y)); }
SPMD_FN double spmd_mind(double x, double y) { return x != x ? x : (y != y ? y : (x < y ? x : y)); }
SPMD_FN float spmd_signf(float x) { return x > 0.0f ? 1.0f : (x < 0.0f ? -1.0f : (x == 0.0f ? 0.0f : x)); }
SPMD_FN double spmd_signd(double x) { return x > 0.0 ? 1.0 : (x < 0.0 ? -1.0 : (x == 0.0 ? 0.0 : x)); }
SPMD_FN float spmd_logisticf(float x) { return 1.0f / (1.0f + expf(-x)); }
SPMD_FN double spmd_logisticd(double x) { return 1.0 / (1.0 + exp(-x)); }
SPMD_FN float spmd_bf16_round(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
SPMD_FN float spmd_f16_round(float x) { return __half2float(__float2half_rn(x)); }
"""


def c_type(dtype: str) -> str:
    """The C type a value of this dtype is computed in (half types compute in float)."""
    return C_TYPE[dtype]


def unsigned_type(dtype: str) -> str:
    """Unsigned type wrapping arithmetic runs in (never narrower than int: no promotion UB)."""
    return "unsigned long long" if dtypes.itemsize(dtype) == 8 else "unsigned int"


def literal(dtype: str, value: Any) -> str:
    """A C literal of the compute type; floats exact (hex), ints as two's complement bits."""
    if dtype == "bool":
        return "true" if value else "false"
    if dtypes.is_float(dtype):
        v = float(value)
        double = dtype == "float64"
        if math.isnan(v):
            return (
                "__longlong_as_double(0x7ff8000000000000LL)"
                if double
                else "__int_as_float(0x7fc00000)"
            )
        if math.isinf(v):
            if double:
                return f"__longlong_as_double({'0xfff' if v < 0 else '0x7ff'}0000000000000LL)"
            return f"__int_as_float({'0xff800000' if v < 0 else '0x7f800000'})"
        if not double:
            v = float(dtypes.to_numpy("float32").type(v))
            return f"{v.hex()}f"
        return v.hex()
    bits = 8 * dtypes.itemsize(dtype)
    raw = int(value) & ((1 << bits) - 1)
    return f"(({C_TYPE[dtype]}){raw:#x}ULL)"


def round_half(dtype: str, expr: str) -> str:
    """Round a float result to the value's half precision (identity for other dtypes)."""
    if dtype == "bfloat16":
        return f"spmd_bf16_round({expr})"
    if dtype == "float16":
        return f"spmd_f16_round({expr})"
    return expr


def load(dtype: str, expr: str) -> str:
    """Storage value -> compute value."""
    if dtype == "bool":
        return f"({expr} != 0)"
    if dtype == "bfloat16":
        return f"__bfloat162float({expr})"
    if dtype == "float16":
        return f"__half2float({expr})"
    return expr


def store(dtype: str, expr: str) -> str:
    """Compute value -> storage value (half types round to nearest even)."""
    if dtype == "bool":
        return f"((unsigned char)({expr}))"
    if dtype == "bfloat16":
        return f"__float2bfloat16_rn({expr})"
    if dtype == "float16":
        return f"__float2half_rn({expr})"
    return expr


def _wrap(dtype: str, expr: str) -> str:
    return f"(({C_TYPE[dtype]})({expr}))"


def _float_fn(name: str, dtype: str) -> str:
    return name if dtype == "float64" else name + "f"


def convert(x: str, src: str, dst: str) -> str:
    """convert_element_type: float -> int truncates and saturates, NaN -> 0 (the reference)."""
    if dst == "bool":
        return f"(({x}) != 0)"
    if src == "bool" or not dtypes.is_float(src) or dtypes.is_float(dst):
        return round_half(dst, f"(({C_TYPE[dst]})({x}))")
    info_bits = 8 * dtypes.itemsize(dst)
    low = 0 if dtypes.is_unsigned(dst) else -(1 << (info_bits - 1))
    high = (1 << info_bits) - 1 if dtypes.is_unsigned(dst) else (1 << (info_bits - 1)) - 1
    f = "double" if src == "float64" else "float"
    # (f)high may round up past the range (2**31 in float): >= catches it.
    return (
        f"(({x}) != ({x}) ? {literal(dst, 0)} : (({x}) <= ({f}){float(low)!r} ? "
        f"{literal(dst, low)} : (({x}) >= ({f}){float(high)!r} ? {literal(dst, high)} : "
        f"(({C_TYPE[dst]})({x})))))"
    )


# Rows of the GPU table: (compute-typed C expressions, operand dtype, attrs, result dtype) ->
# a C expression; each row picks its code by the operands' dtype.
Row = Callable[..., str]
Part = Callable[..., str]  # (dtype, *args) -> C expression


def _int_infix(sym: str) -> Part:
    """+ - * in the unsigned type: wraps like numpy, no signed-overflow UB."""
    return lambda d, x, y: _wrap(d, f"({unsigned_type(d)})({x}) {sym} ({unsigned_type(d)})({y})")


def _int_neg(d: str, x: str) -> str:
    return _wrap(d, f"0u - ({unsigned_type(d)})({x})")


def _int_abs(d: str, x: str) -> str:
    return x if dtypes.is_unsigned(d) else f"(({x}) < 0 ? {_int_neg(d, x)} : ({x}))"


def _int_sign(d: str, x: str) -> str:
    if dtypes.is_unsigned(d):
        return _wrap(d, f"({x}) != 0")
    return _wrap(d, f"(({x}) > 0) - (({x}) < 0)")


def _int_div(d: str, x: str, y: str) -> str:
    t = C_TYPE[d]
    if dtypes.is_unsigned(d):
        return f"(({y}) == 0 ? ({t})0 : {_wrap(d, f'({x}) / ({y})')})"
    return (
        f"(({y}) == 0 ? ({t})0 : (({y}) == ({t})-1 ? {_int_neg(d, x)} : "
        f"{_wrap(d, f'({x}) / ({y})')}))"
    )


def _int_rem(d: str, x: str, y: str) -> str:
    t = C_TYPE[d]
    bad = f"({y}) == 0" if dtypes.is_unsigned(d) else f"({y}) == 0 || ({y}) == ({t})-1"
    return f"(({bad}) ? ({t})0 : {_wrap(d, f'({x}) % ({y})')})"


def _int_bitwise(sym: str) -> Part:
    return lambda d, x, y: _wrap(d, f"({x}) {sym} ({y})")


def _int_shift(left: bool) -> Part:
    def part(d: str, x: str, y: str) -> str:
        u, t = unsigned_type(d), C_TYPE[d]
        inside = f"({u})({y}) < {8 * dtypes.itemsize(d)}u"
        if left:
            return f"({inside} ? {_wrap(d, f'({u})({x}) << ({u})({y})')} : ({t})0)"
        fill = f"({t})0" if dtypes.is_unsigned(d) else f"(({x}) < 0 ? ({t})-1 : ({t})0)"
        return f"({inside} ? {_wrap(d, f'({x}) >> ({y})')} : {fill})"

    return part


def _int_pick(sym: str) -> Part:
    return lambda d, x, y: f"(({x}) {sym} ({y}) ? ({x}) : ({y}))"


def _float_call(fn: str) -> Part:
    return lambda d, *xs: f"{_float_fn(fn, d)}({', '.join(xs)})"


def _float_infix(sym: str) -> Part:
    return lambda d, x, y: f"(({x}) {sym} ({y}))"


def _float_helper(fn: str) -> Part:
    """spmd_<fn>f / spmd_<fn>d from HELPERS."""
    return lambda d, *xs: f"spmd_{fn}{'d' if d == 'float64' else 'f'}({', '.join(xs)})"


def _rsqrt(d: str, x: str) -> str:
    return f"({'1.0' if d == 'float64' else '1.0f'} / {_float_fn('sqrt', d)}({x}))"


def _is_finite(d: str, x: str) -> str:
    top = "1.7976931348623157e308" if d == "float64" else "3.40282347e38f"
    return f"({_float_fn('fabs', d)}({x}) <= {top})"


def _by_type(
    on_float: Part | None = None, on_int: Part | None = None, on_bool: str | None = None
) -> Row:
    """A row choosing by the operands' dtype: half floats round the result; a bool op is
    its C operator on 0/1 values (`on_bool`: "||", "&&", "!=", or "!" for not)."""

    def row(args: list[str], in_dtype: str, attrs: dict[str, Any], out_dtype: str) -> str:
        if in_dtype == "bool":
            if on_bool is None:
                raise KeyError(f"no bool lowering of {args} (this is a bug in spmd)")
            if on_bool == "!":
                return f"(!({args[0]}))"
            return f"(({args[0]}) {on_bool} ({args[1]}))"
        if dtypes.is_float(in_dtype):
            return round_half(out_dtype, on_float(in_dtype, *args))
        return on_int(in_dtype, *args)

    return row


def _compare(sym: str) -> Row:
    return lambda args, *_: f"(({args[0]}) {sym} ({args[1]}))"


_FLOAT_CALLS = {
    "exp": "exp",
    "log": "log",
    "log1p": "log1p",
    "expm1": "expm1",
    "tanh": "tanh",
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "sqrt": "sqrt",
    "erf": "erf",
    "floor": "floor",
    "ceil": "ceil",
    "round": "rint",
    "rem": "fmod",
    "pow": "pow",
    "atan2": "atan2",
}

# The GPU backend's table of scalar code: one row per elementwise op (Trait.ELEMENTWISE).
EXPRESSIONS: dict[str, Row] = {
    **{name: _by_type(_float_call(fn)) for name, fn in _FLOAT_CALLS.items()},
    "add": _by_type(_float_infix("+"), _int_infix("+"), "||"),
    "sub": _by_type(_float_infix("-"), _int_infix("-")),
    "mul": _by_type(_float_infix("*"), _int_infix("*"), "&&"),
    "div": _by_type(_float_infix("/"), _int_div),
    "rem": _by_type(_float_call("fmod"), _int_rem),
    "neg": _by_type(lambda d, x: f"(-({x}))", _int_neg),
    "abs": _by_type(_float_call("fabs"), _int_abs),
    "sign": _by_type(_float_helper("sign"), _int_sign),
    "rsqrt": _by_type(_rsqrt),
    "logistic": _by_type(_float_helper("logistic")),
    "is_finite": _by_type(_is_finite),
    "max": _by_type(_float_helper("max"), _int_pick(">"), "||"),
    "min": _by_type(_float_helper("min"), _int_pick("<"), "&&"),
    "and": _by_type(on_int=_int_bitwise("&"), on_bool="&&"),
    "or": _by_type(on_int=_int_bitwise("|"), on_bool="||"),
    "xor": _by_type(on_int=_int_bitwise("^"), on_bool="!="),
    "not": _by_type(on_int=lambda d, x: _wrap(d, f"~({x})"), on_bool="!"),
    "shift_left": _by_type(on_int=_int_shift(True)),
    "shift_right": _by_type(on_int=_int_shift(False)),
    "eq": _compare("=="),
    "ne": _compare("!="),
    "lt": _compare("<"),
    "le": _compare("<="),
    "gt": _compare(">"),
    "ge": _compare(">="),
    "select": lambda args, *_: f"(({args[0]}) ? ({args[1]}) : ({args[2]}))",
    "convert_element_type": lambda args, in_dtype, attrs, out_dtype: convert(
        args[0], in_dtype, out_dtype
    ),
    "stop_gradient": lambda args, *_: args[0],
}


def op_expr(
    name: str, args: list[str], in_dtype: str, attrs: dict[str, Any], out_dtype: str
) -> str:
    """One elementwise op on compute-typed C expressions (its row of EXPRESSIONS)."""
    return EXPRESSIONS[name](args, in_dtype, attrs, out_dtype)


def accumulator_type(dtype: str) -> str:
    """C type a reduction accumulates in: at least 32 bits so warp shuffles can move it."""
    if dtype == "float64":
        return "double"
    if dtypes.is_float(dtype):
        return "float"
    if dtype == "bool":
        return "int"
    if dtypes.itemsize(dtype) == 8:
        return C_TYPE[dtype]
    return "unsigned int" if dtypes.is_unsigned(dtype) else "int"


def reduce_identity(kind: str, dtype: str) -> str:
    """The accumulator's initial value as a C literal."""
    acc = accumulator_type(dtype)
    if kind in ("sum", "or"):
        return f"({acc})0"
    if kind in ("prod", "and"):
        return f"({acc})1"
    if dtype == "bool":
        return f"({acc}){int(kind == 'min')}"
    if dtypes.is_float(dtype):
        return literal(
            "float64" if acc == "double" else "float32",
            float("-inf") if kind == "max" else float("inf"),
        )
    bits = 8 * dtypes.itemsize(dtype)
    if dtypes.is_unsigned(dtype):
        return literal(dtype, 0 if kind == "max" else (1 << bits) - 1)
    return literal(dtype, -(1 << (bits - 1)) if kind == "max" else (1 << (bits - 1)) - 1)


def combine(kind: str, dtype: str, acc: str, x: str) -> str:
    """acc (kind) x on accumulator-typed values (bools as 0/1 ints)."""
    a = accumulator_type(dtype)
    if dtype == "bool":
        kind = {"sum": "or", "prod": "and", "max": "or", "min": "and"}.get(kind, kind)
        return f"(({acc}) {'|' if kind == 'or' else '&'} ({x}))"
    if dtypes.is_float(dtype):
        d = "d" if a == "double" else "f"
        if kind in ("max", "min"):
            return f"spmd_{kind}{d}({acc}, {x})"
        return f"(({acc}) {'+' if kind == 'sum' else '*'} ({x}))"
    if kind in ("max", "min"):
        return f"(({acc}) {'>' if kind == 'max' else '<'} ({x}) ? ({acc}) : ({x}))"
    if kind in ("and", "or"):
        return f"(({acc}) {'&' if kind == 'and' else '|'} ({x}))"
    u = unsigned_type(dtype)
    return f"(({a})(({u})({acc}) {'+' if kind == 'sum' else '*'} ({u})({x})))"
