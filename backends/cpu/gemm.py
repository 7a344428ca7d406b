"""Native batched matmul for small float32/float64 GEMMs, [B,M,K] x [B,K,N] -> [B,M,N]:
register-tiled FMA loops specialised to (M, K, N) and the operands' strides (the output is
contiguous), compiled and cached by backends.cpu.cache. Imports nothing else of the backend.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

import numpy as np
from llvmlite import ir

from backends.cpu import cache
from backends.cpu.codegen import counted_loop

I64 = ir.IntType(64)
I32 = ir.IntType(32)
PTR = ir.PointerType()
VOID = ir.VoidType()
VECTOR_BYTES = 32  # one AVX2 register
TILE_ROWS = 4  # output rows per register tile
TILE_VECTORS = 3  # vectors of output columns per tile: 4 x 3 accumulators, 3 loads, 1 splat
K_UNROLL = 4  # steps of k per loop trip
DTYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType()}
DTYPE_NAMES = {np.dtype(name): name for name in DTYPES}

Strides = tuple[int, int, int]  # in elements: batch, row, column


def column_tiles(n: int, lanes: int) -> list[tuple[int, list[int]]]:
    """(first column, vector widths) of each column tile: full vectors, then one shorter
    vector for the last n % lanes columns."""
    widths = [lanes] * (n // lanes) + ([n % lanes] if n % lanes else [])
    tiles = []
    column = 0
    for first in range(0, len(widths), TILE_VECTORS):
        group = widths[first : first + TILE_VECTORS]
        tiles.append((column, group))
        column += sum(group)
    return tiles


class _GemmEmitter:
    """Emits one kernel's loops: batch, row tiles (a runtime loop, then the leftover rows),
    column tiles (unrolled), and an accumulation loop over k holding the tile in registers."""

    def __init__(
        self,
        module: ir.Module,
        fn: ir.Function,
        dtype: str,
        shape: tuple[int, int, int],
        a_strides: Strides,
    ) -> None:
        self.module = module
        self.fn = fn
        self.scalar = DTYPES[dtype]
        self.itemsize = np.dtype(dtype).itemsize
        self.lanes = VECTOR_BYTES // self.itemsize
        self.m, self.k, self.n = shape
        self.a_strides = a_strides
        self.b_row_stride = self.n  # of the b the tiles read: contiguous columns
        self.b = ir.IRBuilder(fn.append_basic_block("entry"))
        self.entry = self.b.block
        self.allocas = ir.IRBuilder(self.entry)

    def loop(self, lo: ir.Value, hi: ir.Value, body: Callable[[ir.Value], None]) -> None:
        counted_loop(self.b, self.fn, lo, hi, body)

    def alloca(self, ty: ir.Type) -> ir.Value:
        """A slot in the entry block (promoted to a register by LLVM's mem2reg)."""
        self.allocas.position_at_start(self.entry)
        return self.allocas.alloca(ty)

    def element(self, base: ir.Value, index: ir.Value) -> ir.Value:
        return self.b.gep(base, [index], inbounds=True, source_etype=self.scalar)

    def fma(self, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
        name = f"llvm.fma.v{x.type.count}{'f64' if self.itemsize == 8 else 'f32'}"
        fn = self.module.globals.get(name)
        if fn is None:
            fn = ir.Function(self.module, ir.FunctionType(x.type, [x.type] * 3), name)
        return self.b.call(fn, [x, y, z])

    def splat(self, value: ir.Value, width: int) -> ir.Value:
        vector = ir.VectorType(self.scalar, width)
        one = self.b.insert_element(ir.Constant(vector, ir.Undefined), value, ir.Constant(I32, 0))
        mask = ir.Constant(ir.VectorType(I32, width), [0] * width)
        return self.b.shuffle_vector(one, ir.Constant(vector, ir.Undefined), mask)

    def tile(
        self,
        a: ir.Value,
        b_: ir.Value,
        c: ir.Value,
        row: ir.Value,
        rows: int,
        column: int,
        widths: list[int],
    ) -> None:
        """c[row:row+rows, column:column+sum(widths)] = a[row:row+rows, :] @ b[:, that]."""
        b, k_total, n = self.b, self.k, self.n
        offsets = [column + sum(widths[:j]) for j in range(len(widths))]
        types = [ir.VectorType(self.scalar, w) for w in widths]
        accumulators = [[self.alloca(t) for t in types] for _ in range(rows)]
        for row_accumulators in accumulators:
            for slot, t in zip(row_accumulators, types):
                b.store(ir.Constant(t, [0.0] * t.count), slot)
        _, a_row_stride, a_column_stride = self.a_strides
        a_rows = [
            b.mul(b.add(row, ir.Constant(I64, r)), ir.Constant(I64, a_row_stride))
            for r in range(rows)
        ]

        def step(k: ir.Value) -> None:
            b_row = b.mul(k, ir.Constant(I64, self.b_row_stride))
            loaded = [
                b.load(
                    self.element(b_, b.add(b_row, ir.Constant(I64, o))), typ=t, align=self.itemsize
                )
                for o, t in zip(offsets, types)
            ]
            for a_row, row_accumulators in zip(a_rows, accumulators):
                a_column = b.mul(k, ir.Constant(I64, a_column_stride))
                value = b.load(self.element(a, b.add(a_row, a_column)), typ=self.scalar)
                splats: dict[int, ir.Value] = {}
                for slot, vector, t in zip(row_accumulators, loaded, types):
                    if t.count not in splats:
                        splats[t.count] = self.splat(value, t.count)
                    total = self.fma(splats[t.count], vector, b.load(slot, typ=t))
                    b.store(total, slot)

        def unrolled(k: ir.Value) -> None:
            first = b.mul(k, ir.Constant(I64, K_UNROLL))
            for j in range(K_UNROLL):
                step(b.add(first, ir.Constant(I64, j)))

        whole = k_total // K_UNROLL
        self.loop(ir.Constant(I64, 0), ir.Constant(I64, whole), unrolled)
        if k_total % K_UNROLL:
            self.loop(ir.Constant(I64, whole * K_UNROLL), ir.Constant(I64, k_total), step)
        for r, row_accumulators in enumerate(accumulators):
            c_row = b.mul(b.add(row, ir.Constant(I64, r)), ir.Constant(I64, n))
            for slot, o, t in zip(row_accumulators, offsets, types):
                target = self.element(c, b.add(c_row, ir.Constant(I64, o)))
                b.store(b.load(slot, typ=t), target, align=self.itemsize)

    def row_block(self, a: ir.Value, b_: ir.Value, c: ir.Value, row: ir.Value, rows: int) -> None:
        for column, widths in column_tiles(self.n, self.lanes):
            self.tile(a, b_, c, row, rows, column, widths)

    def matrix(self, a: ir.Value, b_: ir.Value, c: ir.Value) -> None:
        full = self.m // TILE_ROWS
        if full:
            self.loop(
                ir.Constant(I64, 0),
                ir.Constant(I64, full),
                lambda t: self.row_block(
                    a, b_, c, self.b.mul(t, ir.Constant(I64, TILE_ROWS)), TILE_ROWS
                ),
            )
        if self.m % TILE_ROWS:
            self.row_block(a, b_, c, ir.Constant(I64, full * TILE_ROWS), self.m % TILE_ROWS)

    def pack(self, source: ir.Value, strides: Strides, target: ir.Value) -> None:
        """target[k, n] = source[k, n] contiguous (a [K,N] operand whose columns are not);
        the inner loop walks the source's shorter stride (a transposed b: along k)."""
        b = self.b
        _, row_stride, column_stride = strides
        inner_is_k = abs(row_stride) < abs(column_stride)
        outer_size, inner_size = (self.n, self.k) if inner_is_k else (self.k, self.n)

        def outer(i: ir.Value) -> None:
            def inner(j: ir.Value) -> None:
                k, n = (j, i) if inner_is_k else (i, j)
                at = b.add(
                    b.mul(k, ir.Constant(I64, row_stride)),
                    b.mul(n, ir.Constant(I64, column_stride)),
                )
                value = b.load(self.element(source, at), typ=self.scalar)
                b.store(value, self.element(target, b.add(b.mul(k, ir.Constant(I64, self.n)), n)))

            self.loop(ir.Constant(I64, 0), ir.Constant(I64, inner_size), inner)

        self.loop(ir.Constant(I64, 0), ir.Constant(I64, outer_size), outer)


def build_gemm(
    dtype: str, shape: tuple[int, int, int], a_strides: Strides, b_strides: Strides, name: str
) -> ir.Module:
    """`void NAME(i64 start, i64 end, ptr args)`: the matmuls of batch entries [start, end),
    args = [a, b, c] pointers to [B,M,K] and [B,K,N] arrays of the given strides (in
    elements) and a contiguous [B,M,N] one. A b whose columns are not contiguous is copied to
    a contiguous [K,N] scratch first, so that the tiles' loads of b are vector loads."""
    module = ir.Module(name=name)
    fn = ir.Function(module, ir.FunctionType(VOID, [I64, I64, PTR]), name)
    emitter = _GemmEmitter(module, fn, dtype, shape, a_strides)
    b = emitter.b
    pointers = []
    for index in range(3):
        slot = b.gep(fn.args[2], [ir.Constant(I64, index)], inbounds=True, source_etype=PTR)
        pointers.append(b.load(slot, typ=PTR))
    m, k, n = shape
    packed = b_strides[2] != 1
    emitter.b_row_stride = n if packed else b_strides[1]
    scratch = b.alloca(emitter.scalar, size=ir.Constant(I64, k * n)) if packed else None

    def matrix(i: ir.Value) -> None:
        a, b_, c = [
            emitter.element(p, b.mul(i, ir.Constant(I64, size)))
            for p, size in zip(pointers, (a_strides[0], b_strides[0], m * n))
        ]
        if scratch is not None:
            emitter.pack(b_, b_strides, scratch)
            b_ = scratch
        emitter.matrix(a, b_, c)

    emitter.loop(fn.args[0], fn.args[1], matrix)
    b.ret_void()
    return module


@functools.lru_cache(maxsize=1024)
def gemm_kernel(
    dtype: str, shape: tuple[int, int, int], a_strides: Strides, b_strides: Strides
) -> cache.KernelFn:
    """The compiled kernel for one dtype, (M, K, N) and operand strides (process or disk
    cache)."""
    fn, _, _ = cache.compile_kernel(
        lambda name: build_gemm(dtype, shape, a_strides, b_strides, name)
    )
    return fn


@functools.lru_cache(maxsize=4096)
def _kernel_of_layout(
    dtype: np.dtype,
    a_shape: tuple[int, ...],
    a_strides: tuple[int, ...],
    b_shape: tuple[int, ...],
    b_strides: tuple[int, ...],
) -> cache.KernelFn | None:
    name = DTYPE_NAMES.get(dtype)
    itemsize = dtype.itemsize
    if name is None or any(s % itemsize for s in (*a_strides, *b_strides)):
        return None
    _, m, k = a_shape
    return gemm_kernel(
        name,
        (m, k, b_shape[2]),
        tuple(s // itemsize for s in a_strides),
        tuple(s // itemsize for s in b_strides),
    )


def kernel_for(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> cache.KernelFn | None:
    """The kernel for [B,M,K] a and [B,K,N] b as laid out (any whole-element strides) into a
    contiguous c of their dtype, or None where no kernel fits. Cached per layout: a dot runs
    with the same layouts each call, and a numpy dtype's name costs microseconds."""
    return _kernel_of_layout(c.dtype, a.shape, a.strides, b.shape, b.strides)


def address(x: np.ndarray) -> int:
    """x's data pointer (a buffer export is ~3x cheaper than x.ctypes.data where it works:
    writable and contiguous)."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(x))
    except (TypeError, ValueError, BufferError):
        return x.ctypes.data


def run_gemm(start: int, end: int, a: np.ndarray, b: np.ndarray, c: np.ndarray) -> None:
    """c[start:end] = a[start:end] @ b[start:end] for [B,M,K] and [B,K,N] arrays of whole
    element strides and a contiguous [B,M,N] one, all of one float dtype (the caller checks
    that: another layout would read out of bounds)."""
    kernel = kernel_for(a, b, c)
    if kernel is None:
        raise ValueError(
            f"no native matmul for {a.dtype} operands of strides {a.strides}, "
            f"{b.strides} into {c.dtype} (this is a bug in spmd)"
        )
    pointers = (ctypes.c_void_p * 3)(address(a), address(b), address(c))
    kernel(start, end, ctypes.addressof(pointers))
