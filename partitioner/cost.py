"""What a layout change costs, measured by planning it: the resharding planner runs on a
scratch program (partitioner/dry_run.py) and the bytes its collectives move are summed.

The partitioner compares alternative plans with these figures, so the estimate and the
emitted collectives can never disagree.
"""

from __future__ import annotations

import functools

from partitioner.dry_run import plan_moved
from partitioner.reshard import reshard
from partitioner.spec import AxisTuple, MeshShape, ShardSpec, local_type
from spmd.ir.types import TensorType

Dims = tuple[AxisTuple, ...]


def reshard_moved(mesh: MeshShape, gtype: TensorType, src: ShardSpec, dst: Dims) -> float:
    """Bytes per device that reshard(src -> dst) moves (pending sums resolved too)."""
    if not src.partial and src.dims == tuple(dst):
        return 0.0
    return _reshard_moved(mesh, gtype.strong(), src, tuple(dst))


@functools.lru_cache(maxsize=4096)
def _reshard_moved(mesh: MeshShape, gtype: TensorType, src: ShardSpec, dst: Dims) -> float:
    """Memoised: a program asks about the same few layout changes again and again."""
    return plan_moved(
        mesh, local_type(gtype, src, mesh), lambda b, x: reshard(b, x, gtype, src, dst, "", "cost")
    )
