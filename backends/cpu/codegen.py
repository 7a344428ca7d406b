"""LLVM IR for one fused kernel: `void NAME(i64 start, i64 end, ptr args)` loops over the
domain (outer dim in [start, end)), loads via constant strides, stores with rounding.

bfloat16/float16 compute each op in float32 and round its result to the half type (round to
nearest even), like the reference interpreter (numpy/ml_dtypes) does after every op.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from llvmlite import ir

from backends.common.fusion import KernelSpec
from backends.common.loop_nest import SMALL_REDUCTION, reduce_identity
from backends.cpu.mathlib import F32, I1, I64, Math, compute_type, constant, emit
from spmd import dtypes

I8, I16, I32 = ir.IntType(8), ir.IntType(16), ir.IntType(32)
PTR = ir.PointerType()
VOID = ir.VoidType()


def storage_type(dtype: str) -> ir.Type:
    if dtype == "bool":
        return I8
    if dtype == "bfloat16":
        return I16
    if dtype == "float16":
        return ir.HalfType()
    return compute_type(dtype)


def accumulator_dtype(dtype: str) -> str:
    """Dtype of the in-memory accumulator of a 'memory' mode reduce."""
    return "float32" if dtype in ("bfloat16", "float16") else dtype


def widen(b: ir.IRBuilder, raw: ir.Value, dtype: str) -> ir.Value:
    """Storage value -> compute value."""
    if dtype == "bool":
        return b.icmp_unsigned("!=", raw, ir.Constant(I8, 0))
    if dtype == "bfloat16":
        return b.bitcast(b.shl(b.zext(raw, I32), ir.Constant(I32, 16)), F32)
    if dtype == "float16":
        return b.fpext(raw, F32)
    return raw


def narrow(b: ir.IRBuilder, value: ir.Value, dtype: str) -> ir.Value:
    """Compute value -> storage value (bfloat16 rounds to nearest even, NaN stays quiet NaN)."""
    if dtype == "bool":
        return b.zext(value, I8)
    if dtype == "float16":
        return b.fptrunc(value, ir.HalfType())
    if dtype != "bfloat16":
        return value
    bits = b.bitcast(value, I32)
    lsb = b.and_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 1))
    rounded = b.lshr(b.add(b.add(bits, ir.Constant(I32, 0x7FFF)), lsb), ir.Constant(I32, 16))
    quiet = b.or_(b.lshr(bits, ir.Constant(I32, 16)), ir.Constant(I32, 0x40))
    nan = b.fcmp_unordered("uno", value, value)
    return b.trunc(b.select(nan, quiet, rounded), I16)


def round_half(b: ir.IRBuilder, value: ir.Value, dtype: str) -> ir.Value:
    """A float32 compute value rounded to bfloat16/float16 (and back to float32)."""
    if dtype not in ("bfloat16", "float16"):
        return value
    return widen(b, narrow(b, value, dtype), dtype)


def _exact(value: Any, dtype: str) -> Any:
    """A constant as the dtype holds it (half types round the Python float)."""
    if dtype not in ("bfloat16", "float16"):
        return value
    return float(np.asarray(value, dtype=dtypes.to_numpy(dtype)))


def combine(m: Math, kind: str, acc: ir.Value, x: ir.Value, dtype: str) -> ir.Value:
    """acc <- acc (kind) x; float sums and products may be reassociated (vectorized)."""
    b = m.b
    is_float = not isinstance(acc.type, ir.IntType)
    if acc.type == I1:
        kind = {"sum": "or", "prod": "and", "max": "or", "min": "and"}.get(kind, kind)
    if kind == "sum":
        return b.fadd(acc, x, flags=("reassoc",)) if is_float else b.add(acc, x)
    if kind == "prod":
        return b.fmul(acc, x, flags=("reassoc",)) if is_float else b.mul(acc, x)
    if kind in ("max", "min"):
        return m.maxmin(acc, x, kind == "max", dtypes.is_unsigned(dtype))
    return b.and_(acc, x) if kind == "and" else b.or_(acc, x)


def counted_loop(b: ir.IRBuilder, fn: ir.Function, lo: ir.Value, hi: ir.Value, body: Any) -> None:
    """for i in [lo, hi): body(i), emitted at b's position (which ends after the loop)."""
    before = b.block
    header = fn.append_basic_block("header")
    inner = fn.append_basic_block("body")
    done = fn.append_basic_block("done")
    b.branch(header)
    b.position_at_end(header)
    i = b.phi(I64)
    i.add_incoming(lo, before)
    b.cbranch(b.icmp_signed("<", i, hi), inner, done)
    b.position_at_end(inner)
    body(i)
    i.add_incoming(b.add(i, ir.Constant(I64, 1)), b.block)
    b.branch(header)
    b.position_at_end(done)


class _Emitter:
    def __init__(self, spec: KernelSpec, module: ir.Module, fn: ir.Function) -> None:
        self.spec = spec
        self.fn = fn
        entry = fn.append_basic_block("entry")
        self.b = ir.IRBuilder(entry)
        self.math = Math(module, self.b)
        self.start, self.end = fn.args[0], fn.args[1]
        self.ptrs = fn.args[2:]
        self.acc: ir.Value | None = None
        if spec.reduce_mode == "trailing":
            self.acc = self.b.alloca(compute_type(self.reduce_dtype))

    @property
    def reduce_dtype(self) -> str:
        return self.spec.arg_dtypes[self.spec.reduce[2]]

    def offset(self, idx: list[ir.Value], strides: tuple[int, ...]) -> ir.Value:
        total: ir.Value = ir.Constant(I64, 0)
        for i, s in zip(idx, strides):
            if s == 0:
                continue
            term = i if s == 1 else self.b.mul(i, ir.Constant(I64, s))
            total = self.b.add(total, term)
        return total

    def address(
        self, arg: int, dtype: str, idx: list[ir.Value], strides: tuple[int, ...]
    ) -> ir.Value:
        return self.b.gep(
            self.ptrs[arg],
            [self.offset(idx, strides)],
            inbounds=True,
            source_etype=storage_type(dtype),
        )

    def loop(self, lo: ir.Value, hi: ir.Value, body: Any) -> None:
        counted_loop(self.b, self.fn, lo, hi, body)

    def point(self, idx: list[ir.Value]) -> None:
        spec, b = self.spec, self.b
        values: list[ir.Value] = []
        for node in spec.nodes:
            kind, dtype = node[0], node[1]
            if kind == "load":
                raw = b.load(self.address(node[2], dtype, idx, node[3]), typ=storage_type(dtype))
                values.append(widen(b, raw, dtype))
            elif kind == "const":
                values.append(constant(dtype, _exact(node[2], dtype)))
            elif kind == "iota":
                values.append(round_half(b, self._iota(self.offset(idx, node[2]), dtype), dtype))
            else:
                args = [values[i] for i in node[4]]
                in_dtype = spec.nodes[node[4][0]][1] if node[4] else dtype
                value = emit(self.math, node[2], args, in_dtype, dict(node[3]), dtype)
                values.append(round_half(b, value, dtype))
        for node, arg, strides in spec.stores:
            dtype = spec.arg_dtypes[arg]
            b.store(narrow(b, values[node], dtype), self.address(arg, dtype, idx, strides))
        if spec.reduce is None:
            return
        kind, node, arg, strides = spec.reduce
        if self.acc is not None:
            acc = b.load(self.acc, typ=self.acc.allocated_type)
            b.store(combine(self.math, kind, acc, values[node], self.reduce_dtype), self.acc)
            return
        dtype = accumulator_dtype(self.reduce_dtype)
        ptr = self.address(arg, dtype, idx, strides)
        acc = widen(b, b.load(ptr, typ=storage_type(dtype)), dtype)
        b.store(narrow(b, combine(self.math, kind, acc, values[node], dtype), dtype), ptr)

    def _iota(self, index: ir.Value, dtype: str) -> ir.Value:
        ty = compute_type(dtype)
        if isinstance(ty, ir.IntType):
            return self.b.trunc(index, ty) if ty.width < 64 else index
        return self.b.sitofp(index, ty)

    def nest(self, level: int, idx: list[ir.Value], first_reduced: int) -> None:
        domain = self.spec.domain
        if level == first_reduced and self.acc is not None:
            kind = self.spec.reduce[0]
            init = constant(self.reduce_dtype, reduce_identity(kind, self.reduce_dtype))
            self.b.store(init, self.acc)
        if level == len(domain):
            self.point(idx)
        elif level == first_reduced > 0 and self.acc is not None and _small(domain[level:]):
            # a few reduced points written out: the kept dim above becomes the innermost
            # loop, which LLVM vectorizes (it vectorizes innermost loops only, unrolling is off)
            for point in np.ndindex(*domain[level:]):
                self.point(idx + [ir.Constant(I64, i) for i in point])
        else:
            lo = self.start if level == 0 else ir.Constant(I64, 0)
            hi = self.end if level == 0 else ir.Constant(I64, domain[level])
            self.loop(lo, hi, lambda i: self.nest(level + 1, idx + [i], first_reduced))
        if level == first_reduced and self.acc is not None:
            _, _, arg, strides = self.spec.reduce
            value = self.b.load(self.acc, typ=self.acc.allocated_type)
            self.b.store(
                narrow(self.b, value, self.reduce_dtype),
                self.address(arg, self.reduce_dtype, idx, strides),
            )


def _small(dims: tuple[int, ...]) -> bool:
    return int(np.prod(dims)) <= SMALL_REDUCTION


def build_module(spec: KernelSpec, name: str, triple: str = "") -> ir.Module:
    """The kernel's LLVM module: an always-inlined body with noalias buffers, and an entry
    point taking (start, end, pointer array)."""
    module = ir.Module(name=name)
    module.triple = triple
    n_args = len(spec.arg_dtypes)
    body = ir.Function(module, ir.FunctionType(VOID, [I64, I64] + [PTR] * n_args), name + "_body")
    body.linkage = "internal"
    body.attributes.add("alwaysinline")
    for arg in body.args[2:]:
        arg.add_attribute("noalias")
    emitter = _Emitter(spec, module, body)
    first_reduced = len(spec.domain)
    if spec.reduce_mode == "trailing":
        strides = spec.reduce[3]
        first_reduced = next((i for i, s in enumerate(strides) if s == 0), len(strides))
    emitter.nest(0, [], first_reduced)
    emitter.b.ret_void()

    entry = ir.Function(module, ir.FunctionType(VOID, [I64, I64, PTR]), name)
    b = ir.IRBuilder(entry.append_basic_block("entry"))
    ptrs = []
    for k in range(n_args):
        slot = b.gep(entry.args[2], [ir.Constant(I64, k)], inbounds=True, source_etype=PTR)
        ptrs.append(b.load(slot, typ=PTR))
    b.call(body, [entry.args[0], entry.args[1], *ptrs])
    b.ret_void()
    return module
