"""A slice of a sharded dim that stays sharded on the same axes ('ab->ab' with a cut, which
the factor rule blocks): instead of gathering the dim and slicing it, each device
receives only the rows of its new block, by permutes (the window realigned onto the
shard grid), when that moves fewer bytes. Unsharded dims are cut locally first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from partitioner.choose import choose_factor_axes, plan_cost
from partitioner.cost import plan_moved
from partitioner.permute_plan import permute_plan, pieces
from partitioner.propagate import op_factors
from partitioner.spec import ShardSpec
from spmd.ir.graph import Op

if TYPE_CHECKING:
    from partitioner.partition import Partitioner


def realign_slice(p: Partitioner, op: Op) -> bool:
    """Partition a stride-1 slice whose result keeps the operand's sharding by permutes;
    False where that does not apply or costs more than the generic plan."""
    v, out = op.inputs[0], op.outputs[0]
    lv, spec = p.env[v]
    want = p.dims_of.get(out)
    gtype = p.types[v]
    starts, limits = op.attrs["start_indices"], op.attrs["limit_indices"]
    if spec.partial or want != spec.dims or any(st != 1 for st in op.attrs["strides"]):
        return False
    cut = [d for d, (s, lim, n) in enumerate(zip(starts, limits, gtype.shape)) if (s, lim) != (0, n)]
    if not any(spec.dims[d] for d in cut):
        return False
    window = list(zip(starts, (lim - s for s, lim in zip(starts, limits))))
    if pieces(gtype, spec.dims, want, p.mesh, window) is None:
        return False
    local = p.b.types[lv]
    moved = plan_moved(p.mesh, local, lambda b, x: permute_plan(b, x, gtype, spec.dims, want, "",
                                                                "", window))
    f = op_factors(op, p.types)
    fa, _ = choose_factor_axes(p, op, f)
    generic = plan_cost(p, op, f, fa)
    if not moved < generic:
        return False
    lv = permute_plan(p.b, lv, gtype, spec.dims, want, op.loc,
                      f"slice keeps dims {', '.join(map(str, cut))} sharded (permutes {moved:.0f} "
                      f"B moved over gather then slice {generic:.0f} B)", window)
    p.bind_result(out, lv, ShardSpec(want))
    return True
