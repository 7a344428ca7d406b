"""The GPU backend against the reference interpreter on a real GPU: every fused op per dtype,
reductions, shape ops, dots (bf16 through cuBLAS), fused chains, donation. Without cupy or a
GPU these skip with the reason; the error a user gets then is checked here too."""

from __future__ import annotations

import numpy as np
import pytest
from op_lists import elementwise

import spmd
import spmd.numpy as jnp
from backends import gpu
from spmd import dtypes
from spmd.errors import LaunchError
from spmd.interpreter import evaluate
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY

GPU = gpu.available()
pytestmark = [pytest.mark.gpu]
# Device libm (expf, tanhf, ...) is within 2 ulp, a little looser than the host's.
TOLERANCE = {"float64": 1e-12, "float32": 4e-6, "float16": 2e-3, "bfloat16": 1e-2}
SHAPES = [(), (0,), (7,), (3, 5), (2, 1, 13), (1031,)]
UNARY_FLOAT = elementwise(1, "float32")
BINARY = elementwise(2, "int32")  # every binary op, the integer-only ones too


def single_op_graph(name: str, in_types: list[TensorType], **attrs: object) -> Graph:
    params = tuple(fresh_id() for _ in in_types)
    out_type = REGISTRY[name].infer(*in_types, **attrs)
    out = fresh_id()
    return Graph(
        params, tuple(in_types), (Op(name, params, (out,), (out_type,), Attrs(attrs)),), (out,)
    )


def sample(
    shape: tuple[int, ...], dtype: str, rng: np.random.Generator, special: bool = True
) -> np.ndarray:
    if dtype == "bool":
        return rng.random(shape) < 0.5
    np_dtype = dtypes.to_numpy(dtype)
    if dtypes.is_int(dtype):
        info = np.iinfo(np_dtype)
        x = rng.integers(max(info.min, -50), min(info.max, 50) + 1, shape).astype(np_dtype)
        if special and x.size > 3:
            x.flat[0], x.flat[1], x.flat[2] = info.min, info.max, 0
        return x
    x = (rng.standard_normal(shape) * 3).astype(np_dtype)
    if special and x.size > 4:
        x.flat[0], x.flat[1], x.flat[2], x.flat[3] = np.nan, np.inf, -np.inf, 0.0
    return x


def check(graph: Graph, args: list[np.ndarray], scale: float = 1.0, **kwargs: object) -> None:
    want = evaluate(graph, args)
    got = gpu.compile_program(graph, **kwargs)(args)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        dtype = dtypes.canonical(w.dtype)
        if dtypes.is_float(dtype):
            tol = TOLERANCE[dtype] * scale
            np.testing.assert_allclose(
                g.astype(np.float64), w.astype(np.float64), rtol=tol, atol=tol, equal_nan=True
            )
        else:
            np.testing.assert_array_equal(g, w)


@pytest.mark.skipif(GPU, reason="a GPU is present")
def test_without_cupy_or_a_gpu_compile_program_says_what_to_install() -> None:
    graph = single_op_graph("exp", [TensorType((3,), "float32")])
    with pytest.raises(LaunchError, match="cupy|CUDA device"):
        gpu.compile_program(graph)


@pytest.mark.parametrize("dtype", dtypes.FLOATS)
@pytest.mark.parametrize("name", UNARY_FLOAT)
def test_unary_float_op_matches_reference(name: str, dtype: str) -> None:
    _skip_without_gpu()
    rng = np.random.default_rng(0)
    for shape in SHAPES:
        x = sample(shape, dtype, rng)
        if name in ("log", "sqrt", "rsqrt", "log1p"):
            x = np.abs(x)
        check(single_op_graph(name, [TensorType(shape, dtype)]), [x])


@pytest.mark.parametrize("dtype", dtypes.ALL)
@pytest.mark.parametrize("name", BINARY)
def test_binary_op_matches_reference(name: str, dtype: str) -> None:
    _skip_without_gpu()
    is_float = dtypes.is_float(dtype)
    if is_float and name not in elementwise(2, "float32"):
        pytest.skip("op not defined for floats")
    if name == "atan2" and not is_float:
        pytest.skip("atan2 is float only")
    if dtype == "bool" and name in ("sub", "div", "rem", "pow", "shift_left", "shift_right"):
        pytest.skip("numpy does not define it on bool")
    rng = np.random.default_rng(2)
    for shape in SHAPES:
        x, y = sample(shape, dtype, rng), sample(shape, dtype, rng, special=False)
        if name.startswith("shift") and y.size:
            y = (np.abs(y.astype(np.int64)) % (8 * y.itemsize + 3)).astype(y.dtype)
        if name in ("div", "rem") and not is_float and y.size > 2:
            y.flat[1] = 0
            y.flat[2] = -1 if not dtypes.is_unsigned(dtype) else 3
        if name == "pow" and not is_float:
            y = np.abs(y)
        check(single_op_graph(name, [TensorType(shape, dtype)] * 2), [x, y])


@pytest.mark.parametrize("src", dtypes.ALL)
def test_convert_element_type_matches_reference(src: str) -> None:
    _skip_without_gpu()
    rng = np.random.default_rng(4)
    for dst in dtypes.ALL:
        x = sample((11,), src, rng, special=False)
        if dtypes.is_float(src) and dtypes.is_unsigned(dst):
            x = np.abs(x)
        check(single_op_graph("convert_element_type", [TensorType((11,), src)], new_dtype=dst), [x])


@pytest.mark.parametrize(
    "dtype", ["float32", "float64", "bfloat16", "float16", "int32", "uint8", "bool"]
)
@pytest.mark.parametrize("kind", ["sum", "max", "min", "prod", "and", "or"])
def test_reduce_matches_reference(kind: str, dtype: str) -> None:
    _skip_without_gpu()
    if (kind in ("and", "or")) != (dtype == "bool") and kind in ("and", "or"):
        pytest.skip("and/or reduce bool only")
    rng = np.random.default_rng(5)
    for shape, axes in [
        ((), ()),
        ((7,), (0,)),
        ((3, 5), (1,)),
        ((300, 5), (0,)),
        ((2, 3, 13), (0, 2)),
        ((3, 5000), (1,)),
        ((100000,), (0,)),
        ((2, 0, 3), (1,)),
    ]:
        x = sample(shape, dtype, rng, special=False)
        if kind == "prod" and dtypes.is_float(dtype):
            x = (np.sign(x) * (1 + np.abs(x) / 1e4)).astype(x.dtype)
        graph = single_op_graph("reduce", [TensorType(shape, dtype)], kind=kind, axes=axes)
        long_sum = kind == "sum" and x.size > 1000
        check(graph, [x], scale=100.0 if long_sum or dtype in ("bfloat16", "float16") else 1.0)


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16", "float16", "int32"])
def test_dot_general_matches_reference(dtype: str) -> None:
    _skip_without_gpu()
    rng = np.random.default_rng(7)
    cases = [
        ((3, 4), (4, 5), (((1,), (0,)), ((), ()))),
        ((2, 3, 64), (2, 5, 64), (((2,), (2,)), ((0,), (0,)))),
        ((4, 3), (4,), (((0,), (0,)), ((), ()))),
        ((0, 3), (3, 2), (((1,), (0,)), ((), ()))),
    ]
    for ls, rs, dims in cases:
        lhs, rhs = sample(ls, dtype, rng, False), sample(rs, dtype, rng, False)
        graph = single_op_graph(
            "dot_general",
            [TensorType(ls, dtype), TensorType(rs, dtype)],
            dimension_numbers=dims,
            preferred_element_type=None,
        )
        check(graph, [lhs, rhs], scale=10.0)


def softmax(x: object) -> object:
    e = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


@pytest.mark.parametrize("shape", [(33, 129), (4, 8192), (1, 100000)])
def test_softmax_and_gelu_programs_match(shape: tuple[int, ...]) -> None:
    _skip_without_gpu()
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    for f in (softmax, lambda v: 0.5 * v * (1 + jnp.tanh(0.79788 * (v + 0.044715 * v**3)))):
        graph = spmd.jit(f).lower(x).graph
        check(graph, [x], scale=10.0)


def test_shape_ops_views_and_fallbacks_match() -> None:
    _skip_without_gpu()
    rng = np.random.default_rng(6)
    x = sample((3, 1, 5), "float32", rng)
    t = [TensorType((3, 1, 5), "float32")]
    for name, attrs in [
        ("broadcast_in_dim", {"shape": (2, 3, 4, 5), "broadcast_dimensions": (1, 2, 3)}),
        ("reshape", {"new_sizes": (5, 3)}),
        ("transpose", {"permutation": (2, 0, 1)}),
        ("rev", {"dimensions": (0, 2)}),
        ("cumsum", {"axis": 2, "reverse": False}),
    ]:
        check(single_op_graph(name, t, **attrs), [x])


def test_donated_param_is_updated_in_place() -> None:
    _skip_without_gpu()
    import cupy

    x = np.arange(1024, dtype=np.float32)
    graph = spmd.jit(lambda v: v * 2.0 + 1.0).lower(x).graph
    exe = gpu.compile_program(graph, donate=[True])
    buf = cupy.asarray(x)
    out = exe.call_device([buf])[0]
    assert out.data.ptr == buf.data.ptr
    np.testing.assert_array_equal(cupy.asnumpy(out), x * 2 + 1)


def _skip_without_gpu() -> None:
    if not GPU:
        pytest.skip("needs cupy (pip install 'spmd[gpu]') and a GPU")
