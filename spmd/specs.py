"""Shardings as the API spells them (Mesh, NamedSharding, P) <-> as the partitioner does
(MeshShape, ShardSpec)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from partitioner.cost import reshard_moved as _reshard_moved
from partitioner.spec import MeshShape, ShardSpec
from spmd.ir.types import TensorType
from spmd.mesh import Mesh
from spmd.named_sharding import PartitionSpec, Sharding


def mesh_shape(mesh: Mesh) -> MeshShape:
    return MeshShape(tuple(mesh.axis_names), tuple(mesh.axis_sizes))


def spec_of(sharding: Sharding, ndim: int) -> ShardSpec:
    return ShardSpec(tuple(sharding.dim_axes(ndim)))


def user_spec(dims: Sequence[tuple[str, ...]]) -> PartitionSpec:
    """P('data', None) rather than P(('data',), ()); trailing replicated dims dropped."""
    entries = [None if not d else d[0] if len(d) == 1 else tuple(d) for d in dims]
    while entries and entries[-1] is None:
        entries.pop()
    return PartitionSpec(*entries)


def reshard_moved(mesh: Mesh, t: TensorType, src: Any, partial: Any, dst: Any) -> float:
    """Bytes per device the resharding planner moves for src (pending sum over `partial`)
    -> dst (partitioner/cost.py's dry run): spmd.autoshard prices its edges with it."""
    return _reshard_moved(mesh_shape(mesh), t, ShardSpec(tuple(src), tuple(partial)), tuple(dst))
