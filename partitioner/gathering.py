"""Gathers and scatter-adds whose blocked dims are sharded, partitioned as local work plus
a pending sum when that moves fewer bytes than the generic plan (gathering them):
a gather from a table sharded on the gathered dim ('abc,ij->aijc' with b blocked, e.g. a
vocabulary-parallel embedding lookup) looks up the indices that fall in each device's own
rows (the others give 0); a scatter-add of batch-sharded updates adds each device's own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from partitioner.choose import generic_cost, pending_sum_moved
from partitioner.spec import ShardSpec, shard_size
from spmd.ir.graph import Op

if TYPE_CHECKING:
    from partitioner.partition import Partitioner


def gather_own_rows(p: Partitioner, op: Op) -> bool:
    """Partition the gather as local lookups plus a pending sum; False where the table's
    gathered dim is not sharded or the generic plan (gather the table) is cheaper."""
    table, indices = op.inputs
    out = op.outputs[0]
    (lt, tspec), (li, ispec) = p.env[table], p.env[indices]
    axis = op.attrs["axis"] % p.types[table].ndim
    axes = tspec.dims[axis]
    if not axes or tspec.partial or ispec.partial or p.types[table].dtype == "bool":
        return False
    dims = tspec.dims[:axis] + ispec.dims + tspec.dims[axis + 1 :]
    flat = [a for d in dims for a in d] + list(axes)
    if len(flat) != len(set(flat)):
        return False  # the indices use the table's axes: the generic plan
    spec = ShardSpec(dims, tuple(a for a in p.mesh.names if a in axes), "sum")
    generic = generic_cost(p, op)
    own = pending_sum_moved(p, out, spec)
    if not own < generic:
        return False
    b, loc = p.b, op.loc
    n = p.types[table].shape[axis]
    block = shard_size(n, p.mesh.size(axes))
    itype = b.types[li]
    # Clip globally first (gather clamps out-of-range indices), then shift to local rows.
    idx = (
        b.emit("convert_element_type", (li,), loc, new_dtype="int32")
        if (itype.dtype != "int32")
        else li
    )
    idx = _clip(p, idx, n - 1, loc)
    start = b.emit("mul", (b.axis_index(axes), b.const(block, "int32")), loc)
    start = b.emit(
        "broadcast_in_dim", (start,), loc, shape=b.types[idx].shape, broadcast_dimensions=()
    )
    local = b.emit("sub", (idx, start), loc)
    inside = b.emit(
        "and",
        (
            b.emit("ge", (local, b.full(0, b.types[local])), loc),
            b.emit("lt", (local, b.full(block, b.types[local])), loc),
        ),
        loc,
    )
    local = _clip(p, local, block - 1, loc)
    rows = b.emit("gather", (lt, local), loc, axis=axis)
    rtype = b.types[rows]
    k = b.types[local].ndim
    mask = b.emit(
        "broadcast_in_dim",
        (inside,),
        loc,
        shape=rtype.shape,
        broadcast_dimensions=tuple(range(axis, axis + k)),
    )
    rows = b.emit("select", (mask, rows, b.full(0, rtype.strong())), loc)
    p.bind_result(out, rows, spec)
    p.notes[out] = (
        f"rows looked up where they live {own:.0f} B moved over gathering the table {generic:.0f} B"
    )
    return True


def _clip(p: Partitioner, x: int, top: int, loc: str) -> int:
    """x clipped into [0, top] (int32)."""
    t = p.b.types[x]
    low = p.b.emit("max", (x, p.b.full(0, t)), loc)
    return p.b.emit("min", (low, p.b.full(top, t)), loc)


def scatter_local_rows(p: Partitioner, op: Op) -> bool:
    """scatter_add with its indices and updates sharded alike on the index dims
    ('abc,ij,aijc->abc'; i, j blocked): each device adds its own updates into its copy
    (the operand counted on one device of the group only) and the result is a pending sum
    over those axes, instead of gathering every update onto every device (the gradient of
    an embedding lookup with the batch sharded); chosen when that moves fewer bytes."""
    x, indices, updates = op.inputs
    out = op.outputs[0]
    (lx, xspec), (li, ispec), (lu, uspec) = p.env[x], p.env[indices], p.env[updates]
    axis = op.attrs["axis"] % p.types[x].ndim
    summed = {a for d in ispec.dims for a in d}
    if not summed or xspec.partial or ispec.partial or uspec.partial or xspec.dims[axis]:
        return False
    if p.types[x].dtype == "bool" or summed & xspec.used_axes():
        return False
    if uspec.dims != xspec.dims[:axis] + ispec.dims + xspec.dims[axis + 1 :]:
        return False
    axes = tuple(a for a in p.mesh.names if a in summed)
    spec = ShardSpec(xspec.dims, axes, "sum")
    generic = generic_cost(p, op)
    own = pending_sum_moved(p, out, spec)
    if not own < generic:
        return False
    b, loc = p.b, op.loc
    xt = b.types[lx]
    first = b.emit("eq", (b.axis_index(axes), b.const(0, "int32")), loc)
    first = b.emit("broadcast_in_dim", (first,), loc, shape=xt.shape, broadcast_dimensions=())
    lx = b.emit("select", (first, lx, b.full(0, xt.strong())), loc)
    summed_out = b.emit("scatter_add", (lx, li, lu), loc, axis=axis)
    p.bind_result(out, summed_out, spec)
    p.notes[out] = (
        f"updates added where they live {own:.0f} B moved over gathering them {generic:.0f} B"
    )
    return True
