"""The local runtime's stacked mode compiled to native code: the per-device program batched
over the device axis (partitioner/device_batching.py) against the lockstep group references, and the
partitioner's differential suite run on it."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from launch import stacked as stacked_module
from launch.stacked import StackedProgram
from partitioner.device_batching import NotBatchable, batch_program
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY
from spmd.spmd_interpreter import evaluate_spmd
from tests.partitioner import test_partition_differential as differential
from tests.partitioner.helpers import assert_matches, rand

MESHES = {(8,): ("a",), (2, 4): ("a", "b"), (4, 2): ("a", "b"), (2, 2, 2): ("a", "b", "c")}
GROUPS = {
    (8,): [("a",)],
    (2, 4): [("a",), ("b",), ("a", "b"), ("b", "a")],
    (4, 2): [("a",), ("b",), ("b", "a")],
    (2, 2, 2): [("a",), ("c",), ("c", "a"), ("b", "c"), ("a", "b", "c"), ("c", "b", "a")],
}


def _cases() -> list[Any]:
    out = []
    for mesh_shape, groups in GROUPS.items():
        for axes in groups:
            k = math.prod(mesh_shape[MESHES[mesh_shape].index(a)] for a in axes)
            name = "x".join(map(str, mesh_shape)) + "-" + "".join(axes)
            out += [
                pytest.param(mesh_shape, axes, kind, id=f"{kind[0]}-{name}") for kind in _kinds(k)
            ]
    return out


def _kinds(k: int) -> list[tuple[str, tuple[int, ...], str, dict[str, Any]]]:
    """(collective, per-device shape, dtype, attrs) with uneven, prime-sized dims."""
    shift = tuple((i, (i + 1) % k) for i in range(k))
    return [
        ("all_reduce", (3, 5), "float32", {"kind": "sum"}),
        ("all_reduce", (7,), "int32", {"kind": "sum"}),
        ("all_reduce", (2, 3), "float32", {"kind": "max"}),
        ("all_reduce", (4,), "int32", {"kind": "min"}),
        ("all_reduce", (3,), "bool", {"kind": "max"}),
        ("all_gather", (3, 5), "float32", {"dim": 0}),
        ("all_gather", (3, 5), "int32", {"dim": 1}),
        ("all_gather", (1,), "float32", {"dim": 0}),
        ("reduce_scatter", (2 * k, 3), "float32", {"dim": 0, "kind": "sum"}),
        ("reduce_scatter", (3, k), "int32", {"dim": 1, "kind": "sum"}),
        ("all_to_all", (k, 3), "float32", {"split_dim": 0, "concat_dim": 1}),
        ("all_to_all", (5, 2 * k), "int32", {"split_dim": 1, "concat_dim": 0}),
        ("all_to_all", (3, 2 * k), "float32", {"split_dim": 1, "concat_dim": 1}),
        ("collective_permute", (3, 2), "float32", {"pairs": shift}),
        ("collective_permute", (4,), "int32", {"pairs": ((0, k - 1),)}),
    ]


def one_op_program(name: str, shape: tuple[int, ...], dtype: str, **attrs: Any) -> Graph:
    """A per-device program: y = name(x) + axis-index-dependent term, results y and x."""
    x = fresh_id()
    xt = TensorType(shape, dtype)
    out_type = REGISTRY[name].infer(xt, **attrs)
    y = fresh_id()
    op = Op(name, (x,), (y,), (out_type,), Attrs(attrs))
    return Graph((x,), (xt,), (op,), (y, x))


def run_both(
    program: Graph, mesh_shape: tuple[int, ...], args: list[list[np.ndarray]]
) -> tuple[Any, Any, StackedProgram]:
    names = MESHES[mesh_shape]
    stacked = StackedProgram(program, names, mesh_shape, native=True)
    assert stacked.native
    return stacked(args), evaluate_spmd(program, args, names, mesh_shape), stacked


@pytest.mark.parametrize("mesh_shape,axes,kind", _cases())
def test_collective_batched_matches_group_reference(
    mesh_shape: tuple[int, ...], axes: tuple[str, ...], kind: Any
) -> None:
    name, shape, dtype, attrs = kind
    names = MESHES[mesh_shape]
    k = math.prod(mesh_shape[names.index(a)] for a in axes)
    program = one_op_program(name, shape, dtype, axes=axes, group_size=k, **attrs)
    n = math.prod(mesh_shape)
    args = [[rand(shape, dtype, seed=d)] for d in range(n)]
    got, want, stacked = run_both(program, mesh_shape, args)
    for g, w in zip(got, want):
        for a, b in zip(g, w):
            assert_matches(a, b)
    kept = {op.name for op in stacked.batched.per_device.values()}
    assert kept == ({name} if dtype == "bool" else set())  # bool reductions run by numpy


def test_axis_index_slices_are_static() -> None:
    """x[axis_index * 2 : +2] (the partitioner's local slice) becomes static slices."""
    b = _ProgramBuilder(TensorType((8, 3), "float32"))
    index = b.op("axis_index", axes=("b", "a"), group_size=8)
    two = b.op("constant", value=np.asarray(2, np.int32))
    zero = b.op("constant", value=np.asarray(0, np.int32))
    offset = b.op("mul", index, two)
    b.op("dynamic_slice", b.x, offset, zero, slice_sizes=(2, 3))
    program = b.graph([b.last, index])
    args = [[rand((8, 3), seed=d)] for d in range(8)]
    got, want, stacked = run_both(program, (2, 4), args)
    for g, w in zip(got, want):
        for a, c in zip(g, w):
            assert_matches(a, c)
    assert not stacked.batched.per_device
    assert "dynamic_slice" not in {op.name for op in stacked.batched.graph.ops}


def test_unbatchable_op_runs_per_device() -> None:
    """gather with per-device indices has no batched rule: it runs per device."""
    b = _ProgramBuilder(TensorType((6, 2), "float32"))
    indices = b.op("convert_element_type", b.op("abs", b.op("floor", b.x)), new_dtype="int32")
    b.op("gather", b.x, b.op("reshape", indices, new_sizes=(12,)), axis=0)
    program = b.graph([b.last])
    args = [[rand((6, 2), seed=d, low=0, high=5)] for d in range(4)]
    names = ("a", "b")
    stacked = StackedProgram(program, names, (2, 2), native=True)
    assert [op.name for op in stacked.batched.per_device.values()] == ["gather"]
    for g, w in zip(stacked(args), evaluate_spmd(program, args, names, (2, 2))):
        assert_matches(g[0], w[0])


def test_collectives_in_sub_graphs_fall_back_to_numpy() -> None:
    xt = TensorType((3,), "float32")
    inner_x = fresh_id()
    inner_y = fresh_id()
    body = Graph(
        (inner_x,),
        (xt,),
        (Op("all_reduce", (inner_x,), (inner_y,), (xt,), Attrs(axes=("a",), group_size=2)),),
        (inner_y,),
    )
    outer = Op("cond", (), (), (), Attrs(branches=(body,)))
    with pytest.raises(NotBatchable):
        batch_program(Graph((), (), (outer,), ()), ("a",), (2,))
    program = one_op_program("all_reduce", (3,), "float32", axes=("a",), group_size=2)
    args = [[rand((3,), seed=d)] for d in range(2)]
    numpy_path = StackedProgram(program, ("a",), (2,), native=False)
    assert not numpy_path.native
    for g, w in zip(numpy_path(args), evaluate_spmd(program, args, ("a",), (2,))):
        assert_matches(g[0], w[0])


class _ProgramBuilder:
    """A tiny per-device program builder for hand-written tests."""

    def __init__(self, param: TensorType):
        self.x = fresh_id()
        self.param = param
        self.types = {self.x: param}
        self.ops: list[Op] = []
        self.last = self.x

    def op(self, name: str, *inputs: int, **attrs: Any) -> int:
        out_type = REGISTRY[name].infer(*[self.types[v] for v in inputs], **attrs)
        out = fresh_id()
        self.ops.append(Op(name, inputs, (out,), (out_type,), Attrs(attrs)))
        self.types[out] = out_type
        self.last = out
        return out

    def graph(self, results: list[int]) -> Graph:
        return Graph((self.x,), (self.param,), tuple(self.ops), tuple(results))


@pytest.fixture
def native_stacked(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """The local runtime in stacked mode on the CPU backend; records each program's path."""
    monkeypatch.setenv("SPMD_BACKEND", "cpu")
    monkeypatch.setenv("SPMD_LOCAL_MODE", "stacked")
    paths: list[bool] = []
    compile_batched = stacked_module.StackedProgram._compile_batched

    def recorded(self: StackedProgram) -> None:
        compile_batched(self)
        paths.append(self.native)

    monkeypatch.setattr(stacked_module.StackedProgram, "_compile_batched", recorded)
    return paths


@pytest.mark.parametrize("fn,shapes,mesh_name,in_specs,out_spec,scale", differential.FAMILIES)
def test_differential_suite_on_native_stacked(
    fn: Any,
    shapes: Any,
    mesh_name: str,
    in_specs: Any,
    out_spec: Any,
    scale: float,
    native_stacked: list[bool],
) -> None:
    differential.test_sharded_matches_unsharded(fn, shapes, mesh_name, in_specs, out_spec, scale)
    assert all(native_stacked)


@pytest.mark.parametrize("backend", ["interpreter", "cpu"])
def test_scan_with_collectives_in_its_body_runs_batched(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Megatron layer stack under lax.scan: the body's all-reduces run on the device axis
    of one batched program (no device threads meeting at every layer)."""
    import spmd
    import spmd.numpy as snp
    from spmd import NamedSharding, P, lax

    monkeypatch.setenv("SPMD_BACKEND", backend)
    mesh = spmd.make_mesh((2, 4), ("data", "model"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16)).astype(np.float32)
    w1 = (rng.normal(size=(3, 16, 32)) / 4).astype(np.float32)
    w2 = (rng.normal(size=(3, 32, 16)) / 4).astype(np.float32)

    def model(x: Any, w1: Any, w2: Any) -> Any:
        def layer(h: Any, ws: Any) -> Any:
            return h + snp.tanh(h @ ws[0]) @ ws[1], h.sum()

        h, ys = lax.scan(layer, x, (w1, w2))
        return (h**2).mean() + ys.sum()

    step = spmd.jit(spmd.value_and_grad(model, argnums=(1, 2)))
    want_loss, want_grads = step(x, w1, w2)
    args = (
        spmd.device_put(x, NamedSharding(mesh, P("data"))),
        spmd.device_put(w1, NamedSharding(mesh, P(None, None, "model"))),
        spmd.device_put(w2, NamedSharding(mesh, P(None, "model"))),
    )
    compiled = step.lower(*args).compile()
    loss, grads = compiled(*args)
    np.testing.assert_allclose(float(loss), float(want_loss), rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-5)
    local = compiled.executable.local
    assert local.mode == "stacked" and local._stacked.kernel is not None
    assert any(r.kind == "all_reduce" and "scan body" in r.reason for r in compiled.collectives())


@pytest.mark.parametrize("order", ["rows", "reversed", "other_base", "strided"])
def test_stack_shards_reuses_the_stacked_result_only_when_rows_are_consecutive(order: str) -> None:
    """The previous step's result split per device comes back as a view of that result;
    any other shards are copied by np.stack. Either way the values are np.stack's."""
    result = rand((8, 64, 80), seed=1)  # 20 KB per shard: above RESTACK_MIN_BYTES
    shards = {
        "rows": [result[d] for d in range(8)],
        "reversed": [result[d] for d in reversed(range(8))],
        "other_base": [result[d] for d in range(7)] + [rand((64, 80), seed=2)],
        "strided": [result[d, :, ::2] for d in range(8)],
    }[order]
    stacked = stacked_module.stack_shards(shards)
    np.testing.assert_array_equal(stacked, np.stack(shards))
    assert np.shares_memory(stacked, result) == (order == "rows")


def test_stack_shards_copies_tiny_consecutive_rows() -> None:
    """Below RESTACK_MIN_BYTES per shard the copy is cheaper than the checks."""
    result = rand((8, 3, 5), seed=3)
    stacked = stacked_module.stack_shards([result[d] for d in range(8)])
    np.testing.assert_array_equal(stacked, result)
    assert not np.shares_memory(stacked, result)


def test_device_put_lays_shards_out_as_rows_the_stacked_runtime_takes_as_is() -> None:
    """On the local runtime a placed array's shards are the rows of one buffer, so a step
    fed the same placed params each call copies none of them into its stacked input."""
    import spmd

    mesh = spmd.make_mesh((2, 4), ("a", "b"))
    value = rand((16, 4096), seed=5)  # 8 x 1024 float32 shards: 32 KB each
    x = spmd.device_put(value, spmd.NamedSharding(mesh, spmd.P("a", "b")))
    shards = x.device_buffers()
    stacked = stacked_module.stack_shards(shards)
    assert all(np.shares_memory(stacked, shard) for shard in shards)
    np.testing.assert_array_equal(np.asarray(x), value)
