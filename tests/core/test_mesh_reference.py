"""Outside jit, an op whose reference runs the whole mesh itself (Trait.MESH_REFERENCE:
shard_map) takes its sharded operands whole; any other op on sharded operands is jitted
and run partitioned (spmd/tracing.py's eager mode)."""

from __future__ import annotations

import numpy as np

import spmd
import spmd.numpy as snp
from spmd.autodiff import trace_flat
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY, Trait
from spmd.sharding import NamedSharding
from spmd.sharding import PartitionSpec as P
from spmd.tracing import bind


def _sharded_range(mesh: spmd.Mesh) -> spmd.Array:
    return spmd.device_put(np.arange(8, dtype=np.float32), NamedSharding(mesh, P("x")))


def test_only_shard_map_runs_the_mesh_in_its_reference():
    assert [name for name, op in REGISTRY.items() if op.has(Trait.MESH_REFERENCE)] == ["shard_map"]


def test_shard_map_bound_outside_jit_runs_its_reference_on_the_global_values():
    mesh = spmd.make_mesh((2,), ("x",))
    x = _sharded_range(mesh)
    body, captured = trace_flat(lambda b: [snp.tanh(b) * 2], [TensorType((4,), "float32")])
    assert captured == []
    (y,) = bind(
        "shard_map",
        x,
        body=body,
        axis_names=("x",),
        axis_sizes=(2,),
        in_specs=((("x",),),),
        out_specs=((("x",),),),
    )
    np.testing.assert_allclose(np.asarray(y), np.tanh(np.arange(8.0)) * 2, rtol=1e-6)
    assert not y.is_sharded  # the reference assembled the global value; nothing partitioned


def test_another_op_on_a_sharded_operand_runs_partitioned():
    mesh = spmd.make_mesh((2,), ("x",))
    y = bind("tanh", _sharded_range(mesh))
    np.testing.assert_allclose(np.asarray(y), np.tanh(np.arange(8.0)), rtol=1e-6)
    assert y.is_sharded and y.sharding.spec == P("x")
