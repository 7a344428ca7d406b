"""IR text: print -> parse gives back the same Graph (ids, types, attrs, locs), the text
reads like StableHLO, and malformed text gives IRParseError with line and column."""

from __future__ import annotations

import re

import ml_dtypes
import numpy as np
import pytest

import spmd
from spmd import lax
from spmd.api import JitFunction
from spmd.errors import IRParseError
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.parser import parse_function, parse_graph
from spmd.ir.printer import format_array, print_graph
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY


def trace(fn, *args) -> Graph:
    """The unoptimized graph of fn on these example args."""
    return JitFunction(fn)._trace(args, {})[0]


def assert_round_trip(graph: Graph) -> str:
    text = print_graph(graph)
    back = parse_graph(text)
    assert back == graph, text
    assert print_graph(back) == text
    return text


F32 = np.float32
X48 = np.arange(32, dtype=F32).reshape(4, 8)


def elementwise_chain(x):
    y = lax.tanh(lax.mul(x, 2.0))
    return lax.select(lax.gt(y, 0.0), lax.exp(y), lax.neg(y)), lax.convert_element_type(y, "int8")


def matmul(x, w):
    return lax.dot_general(x, w, (((1,), (0,)), ((), ())), preferred_element_type="float32")


def reductions(x):
    return lax.reduce_sum(x, (1,)), lax.reduce_max(x, (0, 1)), lax.argmax(x, 1), lax.cumsum(x, 1)


def shapes(x):
    b = lax.broadcast_in_dim(x, (2, 4, 8), (1, 2))
    p = lax.pad(x, 0.0, ((1, -1, 0), (2, 0, 1)))
    s = lax.slice(lax.concatenate([x, x], 0), (1, 0), (7, 8), (2, 3))
    return b, p, s, lax.reshape(lax.transpose(x, (1, 0)), (32,)), lax.rev(x, (0,))


@pytest.mark.parametrize(
    "fn,args",
    [
        (elementwise_chain, (X48,)),
        (matmul, (X48, np.ones((8, 3), F32))),
        (reductions, (X48,)),
        (shapes, (X48,)),
    ],
    ids=["elementwise", "dot_general", "reduce", "shape"],
)
def test_traced_program_round_trips(fn, args):
    assert_round_trip(trace(fn, *args))


CONSTANTS = [
    np.array([1.5, np.nan, -0.0, np.inf, -np.inf, 1e-45, 3.4e38], F32),
    np.array([[0.1, -2.5], [np.nan, np.inf]], np.float64),
    np.array([1.0, -0.0, np.nan, np.inf, 0.00787], ml_dtypes.bfloat16),
    np.array([65504.0, -0.0, np.nan], np.float16),
    np.array([True, False, True]),
    np.array(-7, np.int8),
    np.array([0, 255], np.uint8),
    np.array([-(2**15), 2**15 - 1], np.int16),
    np.array([2**31 - 1], np.int32),
    np.array([-(2**63), 2**63 - 1], np.int64),
    np.array([2**64 - 1], np.uint64),
    np.array([0, 2**32 - 1], np.uint32),
    np.array([1, 2], np.uint16),
    np.zeros((2, 0, 3), F32),
    np.array(3.25, F32),
    np.arange(2000, dtype=F32).reshape(40, 50) / 7,  # large: printed as hex
    np.frombuffer(np.array([0xFFC00001, 0x7F800001], np.uint32).tobytes(), F32),  # NaN payloads
]


@pytest.mark.parametrize("value", CONSTANTS, ids=lambda v: f"{v.dtype}{v.shape}")
def test_constants_round_trip_bit_exactly(value, x64_on):
    graph = trace(lambda: lax.constant(value))
    text = assert_round_trip(graph)
    parsed = parse_graph(text).ops[0].attrs["value"]
    assert parsed.dtype == value.dtype and parsed.shape == value.shape
    assert parsed.tobytes() == value.tobytes()


@pytest.mark.parametrize(
    "value", [v for v in CONSTANTS if v.dtype.itemsize == 8], ids=lambda v: f"{v.dtype}{v.shape}"
)
def test_x64_off_stores_64_bit_constants_narrowed_as_jax(value):
    """JAX's canonicalisation is astype: float64 rounds, int64 wraps (INT_MIN becomes 0)."""
    with spmd.enable_x64(False):
        graph = trace(lambda: lax.constant(value))
        text = assert_round_trip(graph)
    want = value.astype({"f": np.float32, "i": np.int32, "u": np.uint32}[value.dtype.kind])
    parsed = parse_graph(text).ops[0].attrs["value"]
    assert parsed.dtype == want.dtype and parsed.tobytes() == want.tobytes()
    assert graph.ops[0].types[0].dtype == str(want.dtype)


def test_large_and_nan_payload_arrays_print_as_hex():
    assert re.fullmatch(r"dense<0x[0-9A-F]+ : tensor<40x50xfloat32>>", format_array(CONSTANTS[-2]))
    assert format_array(CONSTANTS[-1]).startswith("dense<0x")
    assert format_array(np.array([1, 2], np.int32)) == "dense<[1, 2] : tensor<2xint32>>"


def test_attribute_kinds_round_trip():
    from spmd.sharding import ShardingAttr

    sharding = ShardingAttr(("data", "model"), (2, 4), (("data",), (), ("data", "model")))
    attrs = Attrs(
        a=1,
        b=-2.5e-300,
        c=float("inf"),
        d=True,
        e=None,
        f='bf16 "quoted"',
        g=(),
        h=(1,),
        i=((1, 2), ("x",)),
        j=sharding,
        k=TensorType((2,), "int8"),
        m=frozenset({"x", "y"}),
        n=-0.0,
    )
    x = fresh_id()
    t = TensorType((3,), "float32", weak=True)
    op = Op("sharding_constraint", (x,), (fresh_id(),), (t,), attrs, "my file.py:7")
    back = parse_graph(print_graph(Graph((x,), (t,), (op,), op.outputs)))
    assert back.ops[0].attrs == attrs
    assert str(back.ops[0].attrs["n"]) == "-0.0"
    assert back.ops[0].attrs["j"] == sharding
    assert back.ops[0].loc == "my file.py:7" and back.param_types[0].weak


def test_ops_with_several_or_no_outputs_and_results_that_are_params():
    x, a, b = fresh_id(), fresh_id(), fresh_id()
    t = TensorType((2,), "float32")
    two = Op("split_pair", (x,), (a, b), (t, t), Attrs(), "f.py:1")
    effect = Op("print", (a,), (), (), Attrs(message="hi"), "")
    graph = Graph((x,), (t,), (two, effect), (b, x, x))
    text = print_graph(graph)
    assert f"%{a}, %{b} = split_pair(%{x}) : ({t}, {t})" in text
    assert parse_graph(text) == graph


def test_nested_sub_graphs_round_trip():
    inner_x, inner_y = fresh_id(), fresh_id()
    t = TensorType((4,), "float32")
    body = Graph(
        (inner_x,), (t,), (Op("neg", (inner_x,), (inner_y,), (t,), Attrs(), "b.py:3"),), (inner_y,)
    )
    other = Graph((fresh_id(),), (t,), (), ())
    other = other.replace(results=other.params)
    x, out = fresh_id(), fresh_id()
    op = Op(
        "cond", (x,), (out,), (t,), Attrs(branches=(body, other), then=body, length=3), "c.py:9"
    )
    graph = Graph((x,), (t,), (op,), (out,))
    text = assert_round_trip(graph)
    assert re.search(r"branches = \(graph\(%\d+: tensor<4xfloat32>\) \{\n +%\d+ = neg", text)


def scan_program(x):
    def body(carry, item):
        return lax.add(carry, item), lax.mul(item, 2.0)

    return lax.scan(body, lax.reduce_sum(x, (0,)), x)


def cond_program(x):
    return lax.cond(lax.gt(lax.reduce_sum(x, (0, 1)), 0.0), lax.exp, lax.neg, x)


def while_program(x):
    def body(carry):
        i, c = carry
        return lax.add(i, 1), lax.mul(c, 2.0)

    return lax.while_loop(lambda carry: lax.lt(carry[0], 3), body, (lax.constant(0), x))[1]


@pytest.mark.parametrize(
    "fn,op", [(scan_program, "scan"), (cond_program, "cond"), (while_program, "while_loop")]
)
def test_control_ops_trace_verify_optimize_and_round_trip(fn, op):
    if op not in REGISTRY:
        pytest.skip(f"{op} is not registered yet")
    from spmd.interpreter import evaluate
    from spmd.ir.verifier import verify
    from spmd.passes import optimize

    graph = trace(fn, X48)
    assert op in [o.name for o in graph.ops]
    text = assert_round_trip(graph)
    assert re.search(rf"= {op}\(.*graph\(%\d+", text)
    verify(graph)
    optimized = optimize(graph, verify=True)
    assert_round_trip(optimized)
    for want, got in zip(evaluate(graph, [X48]), evaluate(optimized, [X48])):
        np.testing.assert_array_equal(got, want)


def test_text_reads_like_stablehlo():
    text = print_graph(trace(matmul, X48, np.ones((8, 3), F32)), name="train")
    lines = text.split("\n")
    assert re.fullmatch(
        r"func @train\(%\d+: tensor<4x8xfloat32>, %\d+: tensor<8x3xfloat32>\) "
        r"-> \(tensor<4x3xfloat32>\) \{",
        lines[0],
    )
    assert re.fullmatch(
        r"  %\d+ = dot_general\(%\d+, %\d+\) \{dimension_numbers = "
        r"\(\(\(1,\), \(0,\)\), \(\(\), \(\)\)\), preferred_element_type = "
        r"\"float32\"\} : tensor<4x3xfloat32> loc\(\"test_ir_text.py:\d+\"\)",
        lines[1],
    )
    assert re.fullmatch(r"  return %\d+", lines[2]) and lines[3] == "}"


def test_function_names_that_are_not_identifiers_are_quoted():
    graph = trace(lambda x: lax.neg(x), X48)
    text = print_graph(graph, name="<lambda>")
    assert text.startswith('func @"<lambda>"(')
    assert parse_function(text) == ("<lambda>", graph)


def test_parse_reserves_ids_so_fresh_ids_do_not_collide():
    text = "func @f(%900000001: tensor<f32>) -> (tensor<float32>) {\n  return %900000001\n}"
    with pytest.raises(IRParseError):
        parse_graph(text)  # 'f32' is not a dtype name
    name, graph = parse_function(text.replace("tensor<f32>", "tensor<float32>"))
    assert name == "f" and graph.params == (900000001,)
    assert fresh_id() > 900000001


@pytest.mark.parametrize(
    "text,line,column,message",
    [
        ("func @f() -> () {\n  %1 = neg(%0) : tensor<2xfloat32\n}", 2, 24, "unexpected character"),
        ("func @f() -> () {\n  return %1 %2\n}", 2, 13, "expected '}'"),
        (
            "func @f() -> () {\n  %1 = neg(%0) : tensor<2xfloat33>\n  return %1\n}",
            2,
            18,
            "malformed type",
        ),
        (
            "func @f() -> () {\n  %1, %2 = neg(%0) : tensor<2xfloat32>\n  return\n}",
            2,
            12,
            "defines 2 values but lists 1 types",
        ),
        (
            "func @f() -> () {\n  %1 = c() {v = ]} : tensor<2xfloat32>\n  return\n}",
            2,
            17,
            "expected an attribute value",
        ),
        (
            'func @f() -> () {\n  %1 = c() {v = #opaque<"x">} : tensor<2xfloat32>\n  return\n}',
            2,
            17,
            "opaque",
        ),
        ("func @f( -> () {}", 1, 10, "expected 'value'"),
        ("func @f() -> () {\n  return\n}\nextra", 4, 1, "expected 'end'"),
    ],
)
def test_malformed_text_raises_parse_error_with_line_and_column(text, line, column, message):
    with pytest.raises(IRParseError) as info:
        parse_graph(text)
    assert (info.value.line, info.value.column) == (line, column), str(info.value)
    assert message in str(info.value)
    assert "^" in str(info.value) and "hint:" in str(info.value)
