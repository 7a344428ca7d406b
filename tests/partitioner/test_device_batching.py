"""Device batching (partitioner/device_batching.py): for every registered op with a batching
rule, the batched one-op program gives each device what the op gives it alone (numpy
reference per device); and the stacked runtime runs the same batched program whichever
backend compiles it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from launch.stacked import StackedProgram
from partitioner.device_batching import batch_program
from spmd import dtypes
from spmd.interpreter import evaluate, run_reference
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY
from spmd.spmd_interpreter import evaluate_spmd
from tests.test_registry_coverage import SAMPLES

MESH = (2, 3)
NAMES = ("a", "b")
N = math.prod(MESH)


def sample_op(name: str) -> Op:
    in_types, attrs = SAMPLES[name]()
    out = REGISTRY[name].infer(*in_types, **attrs)
    outs = out if isinstance(out, tuple) else (out,)
    return Op(
        name,
        tuple(fresh_id() for _ in in_types),
        tuple(fresh_id() for _ in outs),
        outs,
        Attrs(attrs),
    )


def batchable_ops() -> list[str]:
    """Every op of the registry that batches (OpDef.shared_operands) and has operands."""
    return sorted(
        name
        for name, opdef in REGISTRY.items()
        if opdef.shared_operands is not None and SAMPLES[name]()[0]
    )


def value(t: TensorType, rng: np.random.Generator) -> np.ndarray:
    """A sample of type t; integers in [0, 2) so that they index any sample dim."""
    if t.dtype == "bool":
        return rng.random(t.shape) < 0.5
    if dtypes.is_int(t.dtype):
        return rng.integers(0, 2, t.shape).astype(dtypes.to_numpy(t.dtype))
    return rng.normal(size=t.shape).astype(dtypes.to_numpy(t.dtype))


def one_op_program(
    op: Op, params: list[int], in_types: tuple[TensorType, ...], constants: dict[int, np.ndarray]
) -> Graph:
    """op with operands `params` as per-device params, the others constants (the same on
    every device)."""
    ops = [
        Op("constant", (), (v,), (in_types[i],), Attrs(value=constants[i]))
        for i, v in enumerate(op.inputs)
        if i not in params
    ]
    return Graph(
        tuple(op.inputs[i] for i in params),
        tuple(in_types[i] for i in params),
        (*ops, op),
        op.outputs,
    )


@pytest.mark.parametrize("shared", ["per_device", "constant"])
@pytest.mark.parametrize("name", batchable_ops())
def test_batched_op_matches_each_device_alone(name: str, shared: str) -> None:
    """per_device: every operand differs by device (shared operands still the same);
    constant: only operand 0 does, the others are broadcast to the device axis."""
    op = sample_op(name)
    in_types = SAMPLES[name]()[0]
    rng = np.random.default_rng(sum(map(ord, name)))
    fixed = {i: value(t, rng) for i, t in enumerate(in_types)}
    keep = REGISTRY[name].shared_operands
    params = [
        i for i in range(len(in_types)) if i == 0 or (shared == "per_device" and i not in keep)
    ]
    program = one_op_program(op, params, in_types, fixed)
    per_device = [[value(in_types[i], rng) for i in params] for _ in range(N)]
    batched = batch_program(program, NAMES, MESH)
    assert not batched.per_device, f"{name} fell back to running per device"
    assert name in {o.name for o in batched.graph.ops}
    stacked = [np.stack([args[k] for args in per_device]) for k in range(len(params))]
    got = evaluate(batched.graph, stacked, batched.run_op)
    for d, args in enumerate(per_device):
        inputs = {**fixed, **dict(zip(params, args))}
        want = run_reference(op, [inputs[i] for i in range(len(in_types))])
        for g, w in zip(got, want):
            np.testing.assert_allclose(g[d], w, rtol=1e-6, atol=1e-6, equal_nan=True)
            assert g[d].dtype == w.dtype


def test_rule_list_comes_from_the_registry() -> None:
    """The ops above are every op whose OpDef says it batches: views, reductions, sorts,
    dots and every elementwise op."""
    ops = batchable_ops()
    assert {"add", "dot_general", "gather", "sort", "argsort", "pad"} <= set(ops)
    assert not {"all_reduce", "dynamic_slice", "scan"} & set(ops)


@pytest.mark.parametrize("backend", ["interpreter", "cpu"])
def test_stacked_runtime_runs_the_batched_program_on_every_backend(backend: str) -> None:
    """The small-program (numpy) path and the native path run one batched program: a shared
    operand batched per device falls back per device on both."""
    t = TensorType((4, 3), "float32")
    x, i, g, s, y = (fresh_id() for _ in range(5))
    it = TensorType((4,), "int32")
    ops = (
        Op(
            "convert_element_type",
            (x,),
            (i,),
            (t.with_dtype("int32"),),
            Attrs(new_dtype="int32", weak=False),
        ),
        Op("reduce", (i,), (g,), (it,), Attrs(kind="max", axes=(1,))),
        Op("gather", (x, g), (s,), (TensorType((4, 3), "float32"),), Attrs(axis=0)),
        Op("add", (s, x), (y,), (t,)),
    )
    program = Graph((x,), (t,), ops, (y,))
    rng = np.random.default_rng(0)
    args = [[rng.uniform(0, 3.9, (4, 3)).astype(np.float32)] for _ in range(N)]
    stacked = StackedProgram(program, NAMES, MESH, backend=backend)
    assert stacked.native == (backend == "cpu")
    assert [o.name for o in stacked.batched.per_device.values()] == ["gather"]
    for got, want in zip(stacked(args), evaluate_spmd(program, args, NAMES, MESH)):
        np.testing.assert_array_equal(got[0], want[0])


def test_batched_program_states_its_shape() -> None:
    """After the pass every param and result has the leading device dim of size N."""
    op: Any = sample_op("dot_general")
    in_types = SAMPLES["dot_general"]()[0]
    program = one_op_program(op, [0, 1], in_types, {})
    batched = batch_program(program, NAMES, MESH).graph
    assert [t.shape[0] for t in batched.param_types] == [N, N]
    assert [batched.types[v].shape for v in batched.results] == [(N, 2, 4)]
