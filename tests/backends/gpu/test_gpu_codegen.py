"""GPU code generation without a GPU: the CUDA C of every fused op (per dtype) and of
hypothesis-drawn fused chains compiles with nvcc (one batch per test), and the elementwise
emitter's C, compiled for the host with g++ and small shims for the CUDA intrinsics, gives
the reference interpreter's numbers (integers and NaN/inf semantics exactly)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from op_lists import elementwise

import spmd
import spmd.numpy as jnp
from backends.common.fusion import build_kernel, group_ops
from backends.gpu import LOWERINGS, codegen, cuda_math, kernel_sources
from spmd import dtypes
from spmd.interpreter import evaluate
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY

UNARY_FLOAT = elementwise(1, "float32")
BINARY = elementwise(2, "float32")
INT_ONLY = sorted(set(elementwise(2, "int32")) - set(BINARY))
NOT_ON_BOOL = ("sub", "div", "rem", "pow", "shift_left", "shift_right", "atan2")
TOLERANCE = {"float64": 1e-12, "float32": 2e-6, "float16": 2e-3, "bfloat16": 1e-2}
NVCC = shutil.which("nvcc")
GXX = shutil.which("g++")


def single_op_graph(name: str, in_types: list[TensorType], **attrs: object) -> Graph:
    params = tuple(fresh_id() for _ in in_types)
    out_type = REGISTRY[name].infer(*in_types, **attrs)
    out = fresh_id()
    return Graph(
        params, tuple(in_types), (Op(name, params, (out,), (out_type,), Attrs(attrs)),), (out,)
    )


def op_cases() -> list[tuple[str, list[TensorType], dict]]:
    """Every fused elementwise op for every dtype it is defined on, as (name, types, attrs)."""
    cases = []
    for dtype in dtypes.ALL:
        is_float = dtypes.is_float(dtype)
        names = UNARY_FLOAT if is_float else elementwise(1, dtype)
        for name in names:
            if dtype == "bool" and name in ("neg", "abs", "sign"):
                continue
            cases.append((name, [TensorType((37,), dtype)], {}))
        for name in BINARY + INT_ONLY:
            if (name in INT_ONLY and is_float) or (name in ("atan2", "pow") and not is_float):
                continue
            if dtype == "bool" and name in NOT_ON_BOOL:
                continue
            cases.append((name, [TensorType((37,), dtype)] * 2, {}))
        cases.append(("select", [TensorType((37,), "bool")] + [TensorType((37,), dtype)] * 2, {}))
        for dst in dtypes.ALL:
            cases.append(
                (
                    "convert_element_type",
                    [TensorType((37,), dtype)],
                    {"new_dtype": dst, "weak": False},
                )
            )
    return cases


def reduce_cases() -> list[tuple[str, list[TensorType], dict]]:
    cases = []
    for dtype in ["float32", "float64", "bfloat16", "float16", "int8", "int32", "uint64", "bool"]:
        kinds = ["and", "or"] if dtype == "bool" else ["sum", "max", "min", "prod"]
        for kind in kinds:
            for shape, axes in [
                ((), ()),
                ((7,), (0,)),
                ((3, 500), (1,)),
                ((300, 5), (0,)),
                ((2, 3, 13), (0, 2)),
                ((4096,), (0,)),
            ]:
                cases.append(("reduce", [TensorType(shape, dtype)], {"kind": kind, "axes": axes}))
    return cases


def shape_cases() -> list[tuple[str, list[TensorType], dict]]:
    return [
        (
            "broadcast_in_dim",
            [TensorType((3, 1, 5), "float32")],
            {"shape": (2, 3, 4, 5), "broadcast_dimensions": (1, 2, 3)},
        ),
        (
            "broadcast_in_dim",
            [TensorType((), "bfloat16")],
            {"shape": (8, 16), "broadcast_dimensions": ()},
        ),
        *[
            ("iota", [], {"dtype": d, "shape": (4, 8), "dimension": k})
            for d in ("int32", "float32", "bfloat16", "uint8")
            for k in (0, 1)
        ],
    ]


def compile_cuda(kernels: list[codegen.CudaKernel], tmp_path: Path, optimize: bool = True) -> str:
    """nvcc --ptx of one module holding every kernel; returns the PTX text. Without
    `optimize` NVVM runs at -O0 (a quarter of the time: the op sweep checks the source)."""
    names = [k.name for k in kernels]
    assert len(set(names)) == len(names)
    source = tmp_path / "kernels.cu"
    source.write_text(codegen.module_source(kernels))
    out = tmp_path / "kernels.ptx"
    flags = [] if optimize else ["-Xcicc", "-O0"]
    result = subprocess.run(
        [NVCC, "--ptx", "-arch=sm_90", "-std=c++17", *flags, "-o", str(out), str(source)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    ptx = out.read_text()
    assert all(f".entry {name}(" in ptx for name in names)
    return ptx


def kernels_of(graphs: list[Graph]) -> list[codegen.CudaKernel]:
    """Kernels of several programs, renamed so one module can hold them all."""
    found = []
    for g, graph in enumerate(graphs):
        for group in group_ops(graph):
            k = build_kernel(graph, group)
            found += codegen.generate(k.spec, f"p{g}_{k.name}")
    return found


def test_every_registered_op_has_a_gpu_lowering_row() -> None:
    missing = sorted(set(REGISTRY) - set(LOWERINGS))
    assert not missing, f"add rows to backends/gpu/lower.py LOWERINGS for {missing}"
    fused = {name for name, row in LOWERINGS.items() if row.kind == "fused"}
    assert {"exp", "add", "select", "convert_element_type", "reduce", "iota"} <= fused


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
def test_every_fused_op_and_dtype_compiles_with_nvcc(tmp_path: Path) -> None:
    graphs = [
        single_op_graph(name, types, **attrs)
        for name, types, attrs in op_cases() + reduce_cases() + shape_cases()
    ]
    kernels = kernels_of(graphs)
    assert len(kernels) >= len(graphs)
    compile_cuda(kernels, tmp_path, optimize=False)


def test_packed_path_and_block_reduce_are_chosen() -> None:
    x = np.ones((64, 32), np.float32)
    gelu = kernel_sources(spmd.jit(lambda v: jnp.tanh(v) * v + 1.0).lower(x).graph)
    assert [k.vec for k in gelu] == [4] and "spmd_pack<float, 4>" in gelu[0].source
    row_sum = kernel_sources(
        spmd.jit(lambda v: jnp.sum(v * v, axis=1)).lower(np.ones((8, 1000), np.float32)).graph
    )
    assert [k.strategy for k in row_sum] == ["block", "finish"]
    assert "__shfl_down_sync" in row_sum[0].source
    column_sum = kernel_sources(spmd.jit(lambda v: jnp.sum(v, axis=0)).lower(x).graph)
    assert [k.strategy for k in column_sum] == ["thread"]


UNARY = [
    jnp.exp,
    jnp.tanh,
    jnp.sin,
    jnp.abs,
    lambda x: jnp.sqrt(jnp.abs(x)),
    lambda x: x * x,
    lambda x: -x,
    lambda x: jnp.maximum(x, 0.0),
]
BINARY_FNS = [
    lambda a, b: a + b,
    lambda a, b: a * b,
    lambda a, b: a - b,
    lambda a, b: jnp.minimum(a, b),
    lambda a, b: jnp.where(a > b, a, b),
]
REDUCTIONS = [None, jnp.sum, jnp.max, jnp.min]


@st.composite
def chains(draw: st.DrawFn) -> tuple:
    rows = draw(st.sampled_from([1, 3, 7, 16, 300]))
    cols = draw(st.sampled_from([1, 5, 13, 64, 512]))
    steps = draw(
        st.lists(
            st.tuples(st.booleans(), st.integers(0, 7), st.integers(0, 4), st.booleans()),
            min_size=1,
            max_size=6,
        )
    )
    reduction = draw(st.sampled_from(range(len(REDUCTIONS))))
    axis = draw(st.sampled_from([0, 1, None]))
    dtype = draw(st.sampled_from(["float32", "float64", "bfloat16", "float16"]))
    return rows, cols, steps, reduction, axis, dtype


def chain_graph(case: tuple) -> Graph:
    rows, cols, steps, reduction, axis, dtype = case

    def f(x: object, row: object, col: object) -> object:
        for binary, u, b, use_row in steps:
            other = row if use_row else col
            x = BINARY_FNS[b](x, other) if binary else UNARY[u](x)
        r = REDUCTIONS[reduction]
        return x if r is None else r(x, axis=axis)

    np_dtype = dtypes.to_numpy(dtype)
    args = [np.ones(s, np_dtype) for s in ((rows, cols), (1, cols), (rows, 1))]
    return spmd.jit(f).lower(*args).graph


@pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")
@settings(max_examples=2, deadline=None, derandomize=True)
@given(st.lists(chains(), min_size=25, max_size=25))
def test_random_fused_chains_compile_with_nvcc(cases: list[tuple]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        compile_cuda(kernels_of([chain_graph(c) for c in cases]), Path(tmp))


# -- host emulation of the elementwise emitter ----------------------------------------------
HOST_SHIM = r"""
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#define SPMD_FN static inline
struct __nv_bfloat16 { unsigned short x; };
struct __half { unsigned short x; };
static inline float __int_as_float(int i) { float f; memcpy(&f, &i, 4); return f; }
static inline double __longlong_as_double(long long i) { double d; memcpy(&d, &i, 8); return d; }
static inline float __bfloat162float(__nv_bfloat16 h) {
  unsigned int u = (unsigned int)h.x << 16; float f; memcpy(&f, &u, 4); return f; }
static inline __nv_bfloat16 __float2bfloat16_rn(float f) {
  unsigned int u; memcpy(&u, &f, 4);
  if (f != f) return __nv_bfloat16{(unsigned short)((u >> 16) | 0x40)};
  u += 0x7fffu + ((u >> 16) & 1u); return __nv_bfloat16{(unsigned short)(u >> 16)}; }
static inline float __half2float(__half h) { _Float16 v; memcpy(&v, &h.x, 2); return (float)v; }
static inline __half __float2half_rn(float f) {
  _Float16 v = (_Float16)f; __half h; memcpy(&h.x, &v, 2); return h; }
static void* read_all(const char* path, long* size) {
  FILE* f = fopen(path, "rb"); fseek(f, 0, SEEK_END); *size = ftell(f); fseek(f, 0, SEEK_SET);
  void* p = malloc(*size + 16); if (fread(p, 1, *size, f) != (size_t)*size) exit(3);
  fclose(f); return p; }
static void write_all(const char* path, const void* p, long size) {
  FILE* f = fopen(path, "wb"); fwrite(p, 1, size, f); fclose(f); }
"""


def host_case(index: int, graph: Graph) -> str:
    """C++ running the graph's single kernel over files case{index}_in{k}.bin."""
    groups = group_ops(graph)
    assert len(groups) == 1
    spec = build_kernel(graph, groups[0]).spec
    assert spec.reduce is None and len(spec.domain) == 1
    body = codegen._Body(spec, ["i0"])
    lines = [f"static void case{index}(const char* dir) {{", "  char path[4096]; long size = 0;"]
    n_out = len(spec.arg_dtypes) - spec.n_in
    for arg, dtype in enumerate(spec.arg_dtypes[: spec.n_in]):
        storage = cuda_math.STORAGE_TYPE[dtype]
        lines += [
            f'  snprintf(path, sizeof path, "%s/case{index}_in{arg}.bin", dir);',
            f"  const {storage}* a{arg} = (const {storage}*)read_all(path, &size);",
        ]
    n = spec.domain[0]
    for k in range(n_out):
        storage = cuda_math.STORAGE_TYPE[spec.arg_dtypes[spec.n_in + k]]
        lines.append(
            f"  {storage}* a{spec.n_in + k} = ({storage}*)malloc({n} * sizeof({storage}));"
        )
    lines.append(f"  for (long long i0 = 0; i0 < {n}; ++i0) {{")
    lines += ["    " + s for s in body.emit() + body.stores()]
    out = spec.n_in
    storage = cuda_math.STORAGE_TYPE[spec.arg_dtypes[out]]
    lines += [
        "  }",
        f'  snprintf(path, sizeof path, "%s/case{index}_out.bin", dir);',
        f"  write_all(path, a{out}, {n} * sizeof({storage}));",
        "  (void)size;",
        "}",
    ]
    return "\n".join(lines)


def sample(
    shape: tuple[int, ...], dtype: str, rng: np.random.Generator, special: bool = True
) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    np_dtype = dtypes.to_numpy(dtype)
    if dtypes.is_int(dtype):
        info = np.iinfo(np_dtype)
        x = rng.integers(max(info.min, -50), min(info.max, 50) + 1, shape).astype(np_dtype)
        if special:
            x[:3] = info.min, info.max, 0
        return x
    x = (rng.standard_normal(shape) * 3).astype(np_dtype)
    if special:
        x[:4] = np.nan, np.inf, -np.inf, 0.0
    return x


def host_inputs(name: str, types: list[TensorType], rng: np.random.Generator) -> list[np.ndarray]:
    dtype = types[-1].dtype
    args = [sample(t.shape, t.dtype, rng, special=k == 0) for k, t in enumerate(types)]
    if name in ("log", "sqrt", "rsqrt", "log1p"):
        args[0] = np.abs(args[0])
    if name.startswith("shift"):
        args[1] = (np.abs(args[1].astype(np.int64)) % (8 * args[1].itemsize + 3)).astype(dtype)
    if name in ("div", "rem") and dtypes.is_int(dtype):
        args[1][1] = 0
        args[1][2] = 3 if dtypes.is_unsigned(dtype) else -1
        args[1][5] = 0
    if name == "convert_element_type" and dtypes.is_float(dtype):
        big = np.array([1e30, -1e30, 2.0**31, -(2.0**31) - 1024], np.float64)
        with np.errstate(over="ignore"):
            args[0][4:8] = big.astype(args[0].dtype)
    return args


@pytest.mark.skipif(GXX is None, reason="g++ is not installed")
def test_elementwise_emitter_on_the_host_matches_the_reference(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    cases = [
        (name, types, attrs)
        for name, types, attrs in op_cases()
        if not (
            name == "convert_element_type"
            and dtypes.is_float(types[0].dtype)
            and dtypes.is_unsigned(attrs["new_dtype"])
        )
    ]  # numpy: platform-defined
    graphs, wants = [], []
    for index, (name, types, attrs) in enumerate(cases):
        graph = single_op_graph(name, types, **attrs)
        args = host_inputs(name, types, rng)
        for k, a in enumerate(args):
            (tmp_path / f"case{index}_in{k}.bin").write_bytes(np.ascontiguousarray(a).tobytes())
        graphs.append(graph)
        if name == "convert_element_type" and types[0].dtype == "bfloat16":
            # The reference does not saturate bfloat16 -> int (np.issubdtype(bfloat16,
            # np.floating) is False); XLA's semantics are those of float32 -> int.
            graph = single_op_graph(name, [TensorType(types[0].shape, "float32")], **attrs)
            args = [args[0].astype(np.float32)]
        wants.append(evaluate(graph, args)[0])
    program = [HOST_SHIM, cuda_math.HELPERS.replace("alignas(sizeof(T) * N) ", "")]
    program += [host_case(i, g) for i, g in enumerate(graphs)]
    program += ["int main(int argc, char** argv) {", "  (void)argc;"]
    program += [f"  case{i}(argv[1]);" for i in range(len(graphs))] + ["  return 0;", "}"]
    (tmp_path / "host.cpp").write_text("\n".join(program))
    built = subprocess.run(
        [GXX, "-std=c++17", "-O1", "-w", "-o", str(tmp_path / "host"), str(tmp_path / "host.cpp")],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    ran = subprocess.run(
        [str(tmp_path / "host"), str(tmp_path)], check=False, capture_output=True, timeout=60
    )
    assert ran.returncode == 0, ran.stderr
    failures = []
    for index, ((name, types, attrs), want) in enumerate(zip(cases, wants)):
        got = np.frombuffer((tmp_path / f"case{index}_out.bin").read_bytes(), want.dtype)
        label = f"{name}{[t.dtype for t in types]}{attrs.get('new_dtype', '')}"
        if not _close(got, want.reshape(-1), dtypes.canonical(want.dtype)):
            failures.append(f"{label}: got {got[:8]} want {want.reshape(-1)[:8]}")
    assert failures == [], "\n".join(failures)


def _close(got: np.ndarray, want: np.ndarray, dtype: str) -> bool:
    if not dtypes.is_float(dtype):
        return bool(np.array_equal(got, want))
    tol = TOLERANCE[dtype]
    return bool(
        np.allclose(
            got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol, equal_nan=True
        )
    )
