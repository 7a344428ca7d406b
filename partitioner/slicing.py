"""A slice or a concatenate along a sharded dim whose result stays sharded on the same
axes (the factor rules block that dim): instead of gathering the dim, each device
receives only the rows of its new block, by permutes (the operand's window realigned onto
the result's shard grid), when that moves fewer bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from partitioner.builder import ProgramBuilder
from partitioner.choose import generic_cost
from partitioner.dry_run import plan_moved
from partitioner.permute_plan import permute_plan, pieces
from partitioner.spec import ShardSpec
from spmd.ir.graph import Op

if TYPE_CHECKING:
    from partitioner.partition import Partitioner


def realign_slice(p: Partitioner, op: Op) -> bool:
    """A stride-1 slice whose result keeps the operand's sharding."""
    if any(st != 1 for st in op.attrs["strides"]):
        return False
    starts, limits = op.attrs["start_indices"], op.attrs["limit_indices"]
    return realign_window(
        p, op, list(zip(starts, (b - a for a, b in zip(starts, limits)))), None, "slice"
    )


def realign_pad(p: Partitioner, op: Op) -> bool:
    """A pad (no interior padding) whose result keeps the operand's sharding: the window
    starts before the value and the rows outside it keep the padding value."""
    config = op.attrs["padding_config"]
    if any(interior for _, _, interior in config):
        return False
    shape = p.types[op.inputs[0]].shape
    return realign_window(
        p, op, [(-lo, n + lo + hi) for (lo, hi, _), n in zip(config, shape)], op.inputs[1], "pad"
    )


def realign_window(
    p: Partitioner, op: Op, window: list[tuple[int, int]], fill: int | None, what: str
) -> bool:
    """Partition an op whose result is the window of its operand (in the operand's
    coordinates; outside the operand: the value `fill`, else 0) by permutes into the
    operand's own sharding; False where that does not apply or costs more than the
    generic plan (gather the dim, then cut)."""
    v, out = op.inputs[0], op.outputs[0]
    lv, spec = p.env[v]
    want = p.dims_of.get(out)
    gtype = p.types[v]
    if spec.partial or want != spec.dims:
        return False
    cut = [d for d, ((s, size), n) in enumerate(zip(window, gtype.shape)) if (s, size) != (0, n)]
    if not any(spec.dims[d] for d in cut):
        return False
    if pieces([(gtype, window)], spec.dims, want, p.mesh) is None:
        return False
    local = p.b.types[lv]
    moved = plan_moved(
        p.mesh, local, lambda b, x: permute_plan(b, [x], [(gtype, window)], spec.dims, want, "", "")
    )
    generic = generic_cost(p, op)
    if not moved < generic:
        return False
    value = None if fill is None else p.operand(fill, (), op.loc, f"{what} value")
    lv = permute_plan(
        p.b,
        [lv],
        [(gtype, window)],
        spec.dims,
        want,
        op.loc,
        f"{what} keeps dims {', '.join(map(str, cut))} sharded (permutes "
        f"{moved:.0f} B moved over gathering the dim {generic:.0f} B)",
        value,
    )
    p.bind_result(out, lv, ShardSpec(want))
    return True


def realign_concat(p: Partitioner, op: Op) -> bool:
    """A concatenate along a dim its operands and result shard on the same axes: each
    device receives the rows of its result block from the operands' devices (permutes)
    instead of every operand being gathered, when that moves fewer bytes."""
    out, d = op.outputs[0], op.attrs["dimension"]
    want = p.dims_of.get(out)
    specs = [p.env[v][1] for v in op.inputs]
    if want is None or not want[d] or any(s.partial or s.dims != want for s in specs):
        return False
    total = p.types[out].shape[d]
    sources = []
    offset = 0
    for v in op.inputs:
        gtype = p.types[v]
        sources.append(
            (gtype, [(-offset, total) if i == d else (0, n) for i, n in enumerate(gtype.shape)])
        )
        offset += gtype.shape[d]
    if pieces(sources, want, want, p.mesh) is None:
        return False
    xs = [p.env[v][0] for v in op.inputs]
    moved = plan_moved_many(p, xs, lambda b, ys: permute_plan(b, ys, sources, want, want, "", ""))
    generic = generic_cost(p, op)
    if not moved < generic:
        return False
    out_v = permute_plan(
        p.b,
        xs,
        sources,
        want,
        want,
        op.loc,
        f"concatenate's operands into the result's blocks (permutes "
        f"{moved:.0f} B moved over gathering the operands {generic:.0f} B)",
    )
    p.bind_result(out, out_v, ShardSpec(want))
    return True


def plan_moved_many(
    p: Partitioner, xs: list[int], plan: Callable[[ProgramBuilder, list[int]], object]
) -> float:
    """plan_moved for a plan over several values."""
    b = ProgramBuilder(p.mesh)
    ys = [b.param(p.b.types[x]) for x in xs]
    plan(b, ys)
    return sum(r.moved for r in b.records)
