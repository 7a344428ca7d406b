"""All-reduce buckets (partitioner/combine.py) in a batched program: split back into one
all-reduce per member (no concatenate, no strided slices), same values as the bucketed
program run by the lockstep group references."""

from __future__ import annotations

from typing import Any

import pytest

from launch.stacked import StackedProgram
from partitioner.combine import combine_all_reduces, unbucket
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.spmd_interpreter import evaluate_spmd
from tests.partitioner.helpers import assert_matches, rand

SHAPES = [(3, 5), (7,), (2, 2, 2)]


def bucketed_program(kind: str, extra_use: bool) -> Graph:
    """Per-device: y_i = all_reduce(x_i * x_i) over "a" for each shape, then combined into
    one bucket; `extra_use` also returns the bucket's reduced value itself."""
    params, types, ops, outs = [], [], [], []
    for shape in SHAPES:
        t = TensorType(shape, "float32")
        x, sq, y = fresh_id(), fresh_id(), fresh_id()
        params.append(x)
        types.append(t)
        ops.append(Op("mul", (x, x), (sq,), (t,)))
        ops.append(Op("all_reduce", (sq,), (y,), (t,), Attrs(axes=("a",), group_size=2, kind=kind)))
        outs.append(y)
    program = Graph(tuple(params), tuple(types), tuple(ops), tuple(outs))
    combined, _ = combine_all_reduces(program, [], None)
    if extra_use:
        bucket = next(op for op in combined.ops if op.name == "all_reduce")
        combined = combined.replace(results=combined.results + bucket.outputs)
    return combined


@pytest.mark.parametrize("kind", ["sum", "max"])
@pytest.mark.parametrize("extra_use", [False, True])
def test_bucket_split_matches_lockstep(kind: str, extra_use: bool) -> None:
    program = bucketed_program(kind, extra_use)
    assert "concatenate" in {op.name for op in program.ops}
    split = unbucket(program)
    names = {op.name for op in split.ops}
    if extra_use:  # the reduced bucket is a result: the bucket stays
        assert split is program
    else:
        assert "concatenate" not in names and "slice" not in names
        assert sum(op.name == "all_reduce" for op in split.ops) == len(SHAPES)
    mesh, axis_names = (2, 4), ("a", "b")
    args = [[rand(s, seed=d * 7 + i) for i, s in enumerate(SHAPES)] for d in range(8)]
    want = evaluate_spmd(program, args, axis_names, mesh)
    for native in (True, False):  # the batched program compiled; run by numpy op by op
        stacked = StackedProgram(program, axis_names, mesh, native=native)
        for g, w in zip(stacked(args), want):
            for a, b in zip(g, w):
                assert_matches(a, b)
        assert ("concatenate" in {op.name for op in stacked.batched.graph.ops}) == extra_use


def test_non_slice_user_keeps_bucket() -> None:
    program = bucketed_program("sum", False)
    bucket = next(op for op in program.ops if op.name == "all_reduce")
    t = bucket.types[0]
    neg = fresh_id()
    extra: Any = Op("neg", bucket.outputs, (neg,), (t,))
    program = program.replace(ops=program.ops + (extra,), results=program.results + (neg,))
    assert unbucket(program) is program
