"""Generic passes on hand-made cases: each keeps the program's results (checked with the
reference interpreter) and each op's loc; the verifier catches broken graphs."""

from __future__ import annotations

import numpy as np
import pytest

from spmd import lax
from spmd.api import JitFunction
from spmd.errors import SpmdError, VerifierError
from spmd.interpreter import evaluate
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.printer import print_graph
from spmd.ir.types import TensorType
from spmd.ir.verifier import verify
from spmd.passes import PASSES, optimize
from spmd.passes.constant_fold import FOLD_LIMIT, constant_fold
from spmd.passes.cse import cse
from spmd.passes.dce import dce
from spmd.passes.simplify import simplify

F32 = np.float32
RNG = np.random.default_rng(0)
X = RNG.standard_normal((3, 4)).astype(F32)
T34 = TensorType((3, 4), "float32")


def trace(fn, *args) -> Graph:
    return JitFunction(fn)._trace(args, {})[0]


def names(graph: Graph) -> list[str]:
    return [op.name for op in graph.ops]


def check_same_results(before: Graph, after: Graph, *args) -> None:
    verify(after)
    for want, got in zip(evaluate(before, args), evaluate(after, args)):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want, err_msg=print_graph(after))


SIMPLIFY_CASES = {
    "mul_by_one": (lambda x: lax.mul(lax.mul(x, 1.0), lax.mul(1.0, x)), ["mul"]),
    "add_zero": (lambda x: lax.add(lax.add(x, 0.0), lax.add(0.0, x)), ["add"]),
    "sub_zero_div_one": (lambda x: lax.div(lax.sub(x, 0.0), 1.0), []),
    "neg_neg": (lambda x: lax.neg(lax.neg(x)), []),
    "transpose_transpose": (lambda x: lax.transpose(lax.transpose(x, (1, 0)), (1, 0)), []),
    "reshape_reshape": (lambda x: lax.reshape(lax.reshape(x, (12,)), (4, 3)), ["reshape"]),
    "reshape_back": (lambda x: lax.reshape(lax.reshape(x, (12,)), (3, 4)), []),
    "convert_same": (
        lambda x: lax.convert_element_type(lax.convert_element_type(x, "int32"), "int32"),
        ["convert_element_type"],
    ),
    "select_true": (lambda x: lax.select(lax.full((3, 4), True), x, lax.neg(x)), []),
    "select_false": (lambda x: lax.select(lax.full((3, 4), False), lax.neg(x), x), []),
    "select_same": (lambda x: lax.select(lax.gt(x, 0.0), x, x), []),
}


@pytest.mark.parametrize("case", SIMPLIFY_CASES)
def test_simplify_removes_identities_and_keeps_results(case):
    fn, left = SIMPLIFY_CASES[case]
    graph = trace(fn, X)
    after = dce(simplify(graph))
    assert [n for n in names(after) if n not in ("constant", "broadcast_in_dim")] == left
    check_same_results(graph, after, X)


def test_simplify_composes_transposes_and_keeps_the_outer_loc():
    graph = trace(
        lambda x: lax.transpose(lax.transpose(x, (1, 2, 0)), (1, 2, 0)), np.zeros((2, 3, 4), F32)
    )
    after = dce(simplify(graph))
    assert names(after) == ["transpose"]
    assert after.ops[0].attrs["permutation"] == (2, 0, 1)
    assert after.ops[0].loc == graph.ops[1].loc and after.ops[0].loc.startswith("test_passes.py:")
    check_same_results(graph, after, np.arange(24, dtype=F32).reshape(2, 3, 4))


DOT_BATCHED = (((2,), (1,)), ((0,), (0,)))  # [b,m,k] x [b,k,n] -> [b,m,n]


@pytest.mark.parametrize(("permutation", "folded"), [((0, 2, 1), True), ((1, 0, 2), False)])
def test_simplify_folds_a_side_swapping_transpose_into_its_dot(permutation, folded):
    a, b = RNG.standard_normal((2, 3, 4)).astype(F32), RNG.standard_normal((2, 4, 5)).astype(F32)
    graph = trace(lambda a, b: lax.transpose(lax.dot_general(a, b, DOT_BATCHED), permutation), a, b)
    after = dce(simplify(graph))
    assert names(after) == (["dot_general"] if folded else ["dot_general", "transpose"])
    assert after.ops[0].loc == graph.ops[0].loc
    check_same_results(graph, after, a, b)


def test_simplify_keeps_the_transpose_of_a_dot_used_twice():
    a, b = RNG.standard_normal((3, 4)).astype(F32), RNG.standard_normal((4, 5)).astype(F32)

    def f(a, b):
        product = lax.dot_general(a, b, (((1,), (0,)), ((), ())))
        return lax.transpose(product, (1, 0)), product

    after = dce(simplify(trace(f, a, b)))
    assert names(after) == ["dot_general", "transpose"]  # never computes the product twice


def test_simplify_never_changes_a_type_even_the_weak_bit():
    x = fresh_id()
    weak = TensorType((3, 4), "float32", weak=True)
    one, ones, out = fresh_id(), fresh_id(), fresh_id()
    graph = Graph(
        (x,),
        (weak,),
        (
            Op("constant", (), (one,), (TensorType((), "float32"),), Attrs(value=np.array(1, F32))),
            Op(
                "broadcast_in_dim",
                (one,),
                (ones,),
                (T34,),
                Attrs(shape=(3, 4), broadcast_dimensions=()),
            ),
            Op("convert_element_type", (x,), (fresh_id(),), (T34,), Attrs(new_dtype="float32")),
        ),
        (),
    )
    convert_out = graph.ops[2].outputs[0]
    graph = graph.replace(
        ops=graph.ops + (Op("mul", (convert_out, ones), (out,), (T34,)),), results=(out,)
    )
    verify(graph)
    after = dce(simplify(graph))
    assert names(after) == ["convert_element_type"]  # x*1 -> the strong convert, not weak x
    assert after.result_types == graph.result_types


def test_constant_fold_evaluates_small_constant_subprograms_at_their_loc():
    graph = trace(
        lambda x: lax.add(
            x, lax.exp(lax.add(lax.full((3, 4), 1.0, "float32"), lax.iota("float32", (3, 4), 1)))
        ),
        X,
    )
    after = dce(constant_fold(graph))
    assert names(after) == ["constant", "add"]
    folded = after.ops[0]
    assert folded.loc == next(op.loc for op in graph.ops if op.name == "exp")
    check_same_results(graph, after, X)


def test_constant_fold_keeps_splats_small_and_big_values_unfolded():
    graph = trace(
        lambda: (
            lax.mul(lax.full((8, 8), 3, "int32"), lax.full((8, 8), 2, "int32")),
            lax.neg(lax.full((FOLD_LIMIT + 1,), 2.0, "float32")),
        )
    )
    after = dce(constant_fold(graph))
    assert "mul" not in names(after) and "neg" in names(after)
    splat = after.producers[after.results[0]]
    assert splat.name == "broadcast_in_dim"
    assert after.producers[splat.inputs[0]].attrs["value"].shape == ()
    check_same_results(graph, after)


def test_constant_fold_keeps_sharding_constraints():
    from spmd.sharding import ShardingAttr

    c, out = fresh_id(), fresh_id()
    t = TensorType((2,), "float32")
    graph = Graph(
        (),
        (),
        (
            Op("constant", (), (c,), (t,), Attrs(value=np.ones(2, F32), weak=False)),
            Op(
                "sharding_constraint",
                (c,),
                (out,),
                (t,),
                Attrs(sharding=ShardingAttr(("d",), (2,), (("d",),))),
            ),
        ),
        (out,),
    )
    assert constant_fold(graph) == graph


def test_cse_merges_equal_pure_ops_and_keeps_impure_ones():
    graph = trace(lambda x: lax.add(lax.tanh(lax.mul(x, 2.0)), lax.tanh(lax.mul(x, 2.0))), X)
    after = dce(cse(graph))
    assert names(after).count("tanh") == 1 and names(after).count("mul") == 1
    check_same_results(graph, after, X)
    key, a, b = fresh_id(), fresh_id(), fresh_id()
    t = TensorType((2,), "uint32")
    rng = Graph(
        (key,),
        (t,),
        (Op("rng_bit_generator", (key,), (a,), (t,)), Op("rng_bit_generator", (key,), (b,), (t,))),
        (a, b),
    )
    assert cse(rng) == rng


def test_cse_and_dce_work_inside_sub_graphs():
    inner = fresh_id()
    t = TensorType((2,), "float32")
    n1, n2, dead = fresh_id(), fresh_id(), fresh_id()
    body = Graph(
        (inner,),
        (t,),
        (
            Op("neg", (inner,), (n1,), (t,)),
            Op("neg", (inner,), (n2,), (t,)),
            Op("exp", (inner,), (dead,), (t,)),
        ),
        (n1, n2),
    )
    x, out = fresh_id(), fresh_id()
    graph = Graph((x,), (t,), (Op("scan", (x,), (out,), (t,), Attrs(body=body)),), (out,))
    new_body = dce(cse(graph)).ops[0].attrs["body"]
    assert names(new_body) == ["neg"] and new_body.results == (n1, n1)


def test_dce_drops_unused_ops_but_keeps_effects():
    x, used, unused = fresh_id(), fresh_id(), fresh_id()
    t = TensorType((2,), "float32")
    graph = Graph(
        (x,),
        (t,),
        (
            Op("neg", (x,), (used,), (t,)),
            Op("exp", (x,), (unused,), (t,)),
            Op("print", (x,), (), ()),
        ),
        (used,),
    )
    assert names(dce(graph)) == ["neg", "print"]


def program(x, w):
    h = lax.dot_general(x, w, (((1,), (0,)), ((), ())))
    a = lax.add(lax.mul(lax.tanh(h), 1.0), 0.0)
    b = lax.tanh(h)
    scale = lax.mul(lax.full((), 2.0, "float32"), lax.full((), 3.0, "float32"))
    return lax.sub(lax.add(a, b), lax.broadcast_in_dim(scale, (3, 5), ())), lax.neg(lax.neg(x))


def test_default_pipeline_keeps_results_and_locs_and_is_idempotent():
    w = RNG.standard_normal((4, 5)).astype(F32)
    graph = trace(program, X, w)
    optimized = optimize(graph, verify=True)
    assert len(optimized.ops) < len(graph.ops)
    assert names(optimized).count("tanh") == 1 and "neg" not in names(optimized)
    check_same_results(graph, optimized, X, w)
    assert {op.loc for op in optimized.ops} <= {op.loc for op in graph.ops}
    assert optimize(optimized) == optimized


def test_spmd_verify_names_the_pass_that_broke_the_graph(monkeypatch):
    def broken(graph: Graph) -> Graph:
        return graph.replace(ops=graph.ops[1:])

    monkeypatch.setitem(PASSES, "broken", broken)
    monkeypatch.setenv("SPMD_VERIFY", "1")
    graph = trace(lambda x: lax.exp(lax.neg(x)), X)
    with pytest.raises(VerifierError, match="after pass 'broken': op 'exp' at line 2"):
        optimize(graph, ("dce", "broken"))
    with pytest.raises(SpmdError, match="unknown pass 'nope'"):
        optimize(graph, ("nope",))


def two_ops() -> tuple[Graph, Op, Op]:
    graph = trace(lambda x: lax.exp(lax.neg(x)), X)
    return graph, graph.ops[0], graph.ops[1]


def test_verifier_catches_use_before_def():
    graph, neg, exp = two_ops()
    with pytest.raises(VerifierError, match=r"op 'exp' at line 2 of the IR: uses %\d+ before"):
        verify(graph.replace(ops=(exp, neg)), "reorder")


def test_verifier_catches_a_wrong_recorded_type():
    graph, neg, exp = two_ops()
    bad = Op("exp", exp.inputs, exp.outputs, (TensorType((3, 4), "float64"),), exp.attrs, exp.loc)
    with pytest.raises(VerifierError) as info:
        verify(graph.replace(ops=(neg, bad)))
    assert "records type tensor<3x4xfloat64> but its inputs give tensor<3x4xfloat32>" in str(
        info.value
    )
    assert exp.loc in str(info.value)  # the user's line of the op


def test_verifier_catches_unknown_ops_redefinitions_and_missing_results():
    graph, neg, exp = two_ops()
    unknown = Op("frobnicate", neg.inputs, neg.outputs, neg.types)
    with pytest.raises(VerifierError, match="unknown op 'frobnicate'"):
        verify(graph.replace(ops=(unknown, exp)))
    twice = Op("neg", neg.inputs, neg.outputs, neg.types)
    with pytest.raises(VerifierError, match="redefines"):
        verify(graph.replace(ops=(neg, twice, exp)))
    with pytest.raises(VerifierError, match="never defined"):
        verify(graph.replace(ops=(neg,)))
    bad_attrs = Op("reduce", neg.outputs, exp.outputs, (T34,), Attrs(kind="sum", axes=(7,)))
    with pytest.raises(VerifierError, match="do not type-check"):
        verify(graph.replace(ops=(neg, bad_attrs)))


def test_opt_cli_prints_optimized_ir(tmp_path, capsys):
    from spmd.ir.parser import parse_graph
    from spmd.opt import main

    graph = trace(lambda x: lax.add(lax.neg(lax.neg(x)), lax.tanh(x)), X)
    path = tmp_path / "prog.ir"
    path.write_text(print_graph(graph))
    assert main(["--passes", "simplify,cse,dce", str(path)]) == 0
    printed = parse_graph(capsys.readouterr().out)
    assert names(printed) == ["tanh", "add"]
    check_same_results(graph, printed, X)
    path.write_text("func @f( -> ")
    assert main([str(path)]) == 1
    assert "IRParseError" in capsys.readouterr().err
