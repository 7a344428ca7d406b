"""CUDA C for one fused kernel (a backends.common.fusion KernelSpec): grid-stride loops, packed
vector loads where the innermost dim is contiguous and pointers aligned, reductions per thread
(short or strided) or per block (warp shuffles, then an optional second pass over parts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from backends.common.fusion import KernelSpec
from backends.gpu import cuda_math as cm
from spmd import dtypes

BLOCK = 256
BLOCK_REDUCE_MIN = 128  # trailing reductions at least this long use a block per row
PRELUDE = (
    r"""
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#define SPMD_FN __device__ __forceinline__
"""
    + cm.HELPERS
)


@dataclass(frozen=True)
class CudaKernel:
    """Generated source of one kernel and what the launcher needs to know about it."""

    name: str
    source: str  # extern "C" functions; compile after PRELUDE
    strategy: str  # "elementwise" | "thread" (a reduce per thread) | "block" (per block)
    points: int  # elementwise: domain size; reductions: number of outputs (rows)
    inner: int = 1  # reduced points per output
    vec: int = 1  # elements per thread in the packed path (1 = no packed path)
    acc_type: str = ""  # C type of block-reduce partials (the second pass's input)


def _grid_loop(var: str, bound: str) -> str:
    """Header of a grid-stride loop (needs `step` = total threads in scope)."""
    return (
        f"for (long long {var} = blockIdx.x * (long long)blockDim.x + threadIdx.x; "
        f"{var} < {bound}; {var} += step) {{"
    )


def _index_lines(var: str, dims: list[int], sizes: list[int], names: list[str]) -> list[str]:
    """Split flat index `var` into per-dim index variables (row-major over dims)."""
    if not dims:
        return []
    lines = [f"long long {var}_rest = {var};"]
    for d, n in reversed(list(zip(dims, sizes))):
        lines.append(f"const long long {names[d]} = {var}_rest % {n}LL; {var}_rest /= {n}LL;")
    return lines


def _offset(strides: tuple[int, ...], names: list[str]) -> str:
    terms = [n if s == 1 else f"{n} * {s}LL" for n, s in zip(names, strides) if s != 0]
    return " + ".join(terms) or "0"


class _Body:
    """Statements computing every node at one domain point."""

    def __init__(self, spec: KernelSpec, names: list[str], lane: str = "") -> None:
        self.spec = spec
        self.names = names
        self.lane = lane  # in the packed path: the lane variable; loads come from packs
        self.lines: list[str] = []

    def value(self, k: int) -> str:
        return f"v{k}"

    def load_expr(self, k: int, node: tuple) -> str:
        _, dtype, arg, strides = node
        if self.lane and strides and strides[-1] == 1:
            return cm.load(dtype, f"p{k}.v[{self.lane}]")
        if self.lane:
            return cm.load(dtype, f"p{k}")
        return cm.load(dtype, f"a{arg}[{_offset(strides, self.names)}]")

    def iota_expr(self, dtype: str, strides: tuple[int, ...]) -> str:
        index = _offset(strides, self.names)
        if self.lane and strides and strides[-1]:
            index = f"({index} + {self.lane} * {strides[-1]}LL)"
        return cm.round_half(dtype, f"(({cm.c_type(dtype)})({index}))")

    def emit(self) -> list[str]:
        nodes = self.spec.nodes
        for k, node in enumerate(nodes):
            kind, dtype = node[0], node[1]
            if kind == "load":
                expr = self.load_expr(k, node)
            elif kind == "const":
                expr = cm.literal(dtype, node[2])
            elif kind == "iota":
                expr = self.iota_expr(dtype, node[2])
            else:
                args = [self.value(i) for i in node[4]]
                in_dtype = nodes[node[4][0]][1] if node[4] else dtype
                expr = cm.op_expr(node[2], args, in_dtype, dict(node[3]), dtype)
            self.lines.append(f"const {cm.c_type(dtype)} {self.value(k)} = {expr};")
        return self.lines

    def stores(self) -> list[str]:
        out = []
        for node, arg, strides in self.spec.stores:
            value = cm.store(self.spec.arg_dtypes[arg], self.value(node))
            if self.lane:
                out.append(f"q{arg}.v[{self.lane}] = {value};")
            else:
                out.append(f"a{arg}[{_offset(strides, self.names)}] = {value};")
        return out


def _params(spec: KernelSpec) -> list[str]:
    params = []
    for arg, dtype in enumerate(spec.arg_dtypes):
        storage = cm.STORAGE_TYPE[dtype]
        params.append(
            f"const {storage}* __restrict__ a{arg}" if arg < spec.n_in else f"{storage}* a{arg}"
        )
    return params


def vector_width(spec: KernelSpec) -> int:
    """Elements per thread in the packed path: 16 bytes of the widest arg, 1 if not packable."""
    if spec.reduce is not None or not spec.domain or not spec.arg_dtypes:
        return 1
    vec = max(1, min(8, 16 // max(dtypes.itemsize(d) for d in spec.arg_dtypes)))
    strides = [n[3] for n in spec.nodes if n[0] == "load"] + [s[2] for s in spec.stores]
    strides += [n[2] for n in spec.nodes if n[0] == "iota"]
    if any(s[-1] not in (0, 1) for s in strides) or spec.domain[-1] % vec:
        return 1
    return vec


def _elementwise(spec: KernelSpec, name: str) -> CudaKernel:
    ndim = len(spec.domain)
    names = [f"i{d}" for d in range(ndim)]
    vec = vector_width(spec)
    total = math.prod(spec.domain)
    lines = [
        f'extern "C" __global__ void __launch_bounds__({BLOCK}) {name}(',
        "    " + ", ".join(_params(spec) + ["long long n"]) + ") {",
        "  const long long step = (long long)gridDim.x * blockDim.x;",
    ]
    if vec > 1:
        lines += _packed_loop(spec, vec, names)
    body = _Body(spec, names)
    lines += ["  " + _grid_loop("i", "n")]
    lines += ["    " + s for s in _index_lines("i", list(range(ndim)), list(spec.domain), names)]
    lines += ["    " + s for s in body.emit() + body.stores()]
    lines += ["  }", "}"]
    return CudaKernel(name, "\n".join(lines), "elementwise", total, vec=vec)


def _packed_loop(spec: KernelSpec, vec: int, names: list[str]) -> list[str]:
    """Each thread handles `vec` consecutive innermost elements through spmd_pack loads."""
    ndim = len(spec.domain)
    packed = sorted(
        {n[2] for n in spec.nodes if n[0] == "load" and n[3][-1] == 1}
        | {arg for _, arg, _ in spec.stores}
    )
    checks = [
        f"((unsigned long long)a{a} % {vec * dtypes.itemsize(spec.arg_dtypes[a])}ULL == 0)"
        for a in packed
    ]
    lines = [
        f"  if ({' && '.join(checks) or 'true'}) {{",
        "    " + _grid_loop("t", f"n / {vec}"),
        f"      const long long i = t * {vec};",
    ]
    lines += ["      " + s for s in _index_lines("i", list(range(ndim)), list(spec.domain), names)]
    for k, node in enumerate(spec.nodes):
        if node[0] != "load":
            continue
        _, dtype, arg, strides = node
        storage = cm.STORAGE_TYPE[dtype]
        where = f"a{arg} + {_offset(strides, names)}"
        if strides[-1] == 1:
            lines.append(
                f"      const spmd_pack<{storage}, {vec}> p{k} = "
                f"*reinterpret_cast<const spmd_pack<{storage}, {vec}>*>({where});"
            )
        else:
            lines.append(f"      const {storage} p{k} = *({where});")
    for _, arg, _ in spec.stores:
        lines.append(f"      spmd_pack<{cm.STORAGE_TYPE[spec.arg_dtypes[arg]]}, {vec}> q{arg};")
    body = _Body(spec, names, lane="lane")
    lines += ["      #pragma unroll", f"      for (int lane = 0; lane < {vec}; ++lane) {{"]
    lines += ["        " + s for s in body.emit() + body.stores()]
    lines.append("      }")
    for _, arg, strides in spec.stores:
        storage = cm.STORAGE_TYPE[spec.arg_dtypes[arg]]
        lines.append(
            f"      *reinterpret_cast<spmd_pack<{storage}, {vec}>*>"
            f"(a{arg} + {_offset(strides, names)}) = q{arg};"
        )
    lines += ["    }", "    return;", "  }"]
    return lines


def _reduce_parts(spec: KernelSpec) -> tuple[list[int], list[int], str, str, str]:
    kind, _, arg, strides = spec.reduce
    kept = [d for d, s in enumerate(strides) if s != 0]
    reduced = [d for d, s in enumerate(strides) if s == 0]
    dtype = spec.arg_dtypes[arg]
    return kept, reduced, kind, dtype, cm.accumulator_type(dtype)


def _reduce(spec: KernelSpec, name: str) -> list[CudaKernel]:
    kept, reduced, kind, dtype, acc = _reduce_parts(spec)
    rows = math.prod(spec.domain[d] for d in kept)
    inner = math.prod(spec.domain[d] for d in reduced)
    trailing = spec.reduce_mode == "trailing"
    strategy = "block" if trailing and inner >= BLOCK_REDUCE_MIN else "thread"
    names = [f"i{d}" for d in range(len(spec.domain))]
    body = _Body(spec, names)
    point = body.emit() + body.stores()
    _, node, arg, out_strides = spec.reduce
    value = f"({acc})(v{node})"
    final = (
        f"a{arg}[{_offset(out_strides, names)}] = {cm.store(dtype, f'({cm.c_type(dtype)})(acc)')};"
    )
    identity = cm.reduce_identity(kind, dtype)
    sizes = [spec.domain[d] for d in kept], [spec.domain[d] for d in reduced]
    head = [f'extern "C" __global__ void __launch_bounds__({BLOCK}) {name}(']
    if strategy == "thread":
        lines = head + [
            "    " + ", ".join(_params(spec) + ["long long rows"]) + ") {",
            "  const long long step = (long long)gridDim.x * blockDim.x;",
            "  " + _grid_loop("r", "rows"),
        ]
        lines += ["    " + s for s in _index_lines("r", kept, sizes[0], names)]
        lines += [
            f"    {acc} acc = {identity};",
            f"    for (long long j = 0; j < {inner}LL; ++j) {{",
        ]
        lines += ["      " + s for s in _index_lines("j", reduced, sizes[1], names)]
        lines += ["      " + s for s in point]
        lines += [
            f"      acc = {cm.combine(kind, dtype, 'acc', value)};",
            "    }",
            "    " + final,
            "  }",
            "}",
        ]
        return [CudaKernel(name, "\n".join(lines), "thread", rows, inner)]
    lines = head + [
        "    "
        + ", ".join(_params(spec) + ["long long rows", "int parts", f"{acc}* partial"])
        + ") {",
        f"  __shared__ {acc} shared[32];",
        "  const long long chunk = ((long long)" + f"{inner}LL + parts - 1) / parts;",
        "  for (long long b = blockIdx.x; b < rows * parts; b += gridDim.x) {",
        "    const long long r = b / parts;",
        "    (void)r;",
        "    const long long lo = (b % parts) * chunk;",
        f"    const long long hi = lo + chunk < {inner}LL ? lo + chunk : {inner}LL;",
    ]
    lines += ["    " + s for s in _index_lines("r", kept, sizes[0], names)]
    lines += [
        f"    {acc} acc = {identity};",
        "    for (long long j = lo + threadIdx.x; j < hi; j += blockDim.x) {",
    ]
    lines += ["      " + s for s in _index_lines("j", reduced, sizes[1], names)]
    lines += ["      " + s for s in point]
    lines += [f"      acc = {cm.combine(kind, dtype, 'acc', value)};", "    }"]
    lines += ["    " + s for s in _block_reduce(kind, dtype, acc, identity)]
    lines += [
        "    if (threadIdx.x == 0) {",
        f"      if (parts == 1) {{ {final} }} else {{ partial[b] = acc; }}",
        "    }",
        "    __syncthreads();",
        "  }",
        "}",
    ]
    finish = _finish(spec, name + "_finish", kept, sizes[0], kind, dtype, acc, identity)
    return [CudaKernel(name, "\n".join(lines), "block", rows, inner, acc_type=acc), finish]


def _block_reduce(kind: str, dtype: str, acc: str, identity: str) -> list[str]:
    # Every lane must reach each shuffle: take the partner's value first, then combine.
    shuffle = [
        "for (int o = 16; o > 0; o >>= 1) {",
        f"  const {acc} other = __shfl_down_sync(0xffffffffu, acc, o);",
        f"  acc = {cm.combine(kind, dtype, 'acc', 'other')};",
        "}",
    ]
    return [
        *shuffle,
        "if ((threadIdx.x & 31) == 0) shared[threadIdx.x >> 5] = acc;",
        "__syncthreads();",
        f"acc = threadIdx.x < (blockDim.x >> 5) ? shared[threadIdx.x] : {identity};",
        "if (threadIdx.x < 32) {",
        *["  " + s for s in shuffle],
        "}",
    ]


def _finish(
    spec: KernelSpec,
    name: str,
    kept: list[int],
    sizes: list[int],
    kind: str,
    dtype: str,
    acc: str,
    identity: str,
) -> CudaKernel:
    """Second pass of a block reduce split into parts: one thread per output row."""
    out_strides = spec.reduce[3]
    names = [f"i{d}" for d in range(len(spec.domain))]
    out_type = cm.STORAGE_TYPE[dtype]
    offset = _offset(tuple(out_strides[d] for d in kept), [names[d] for d in kept])
    lines = [
        f'extern "C" __global__ void __launch_bounds__({BLOCK}) {name}(',
        f"    const {acc}* __restrict__ partial, {out_type}* out, long long rows, int parts) {{",
        "  const long long step = (long long)gridDim.x * blockDim.x;",
        "  " + _grid_loop("r", "rows"),
    ]
    lines += ["    " + s for s in _index_lines("r", kept, sizes, names)]
    lines += [
        f"    {acc} acc = {identity};",
        "    for (int c = 0; c < parts; ++c) {",
        f"      acc = {cm.combine(kind, dtype, 'acc', 'partial[r * parts + c]')};",
        "    }",
        f"    out[{offset}] = {cm.store(dtype, f'({cm.c_type(dtype)})(acc)')};",
        "  }",
        "}",
    ]
    return CudaKernel(name, "\n".join(lines), "finish", 0, acc_type=acc)


def generate(spec: KernelSpec, name: str) -> list[CudaKernel]:
    """The kernel(s) of one spec: one, or a block reduce and its second pass."""
    if spec.reduce is None:
        return [_elementwise(spec, name)]
    return _reduce(spec, name)


def module_source(kernels: list[CudaKernel]) -> str:
    """One compilation unit: the prelude and every kernel."""
    return PRELUDE + "\n" + "\n\n".join(k.source for k in kernels) + "\n"
