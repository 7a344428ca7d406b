"""A gather from a table sharded on the gathered dim ('abc,ij->aijc' with b blocked), e.g.
a vocabulary-parallel embedding lookup: each device looks up the indices that fall in its
own rows (the others give 0), leaving the result a pending sum over the table's axes,
instead of gathering the whole table; chosen when that moves fewer bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from partitioner.choose import choose_factor_axes, pending_sum_moved, plan_cost
from partitioner.propagate import op_factors
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
    dims = tspec.dims[:axis] + ispec.dims + tspec.dims[axis + 1:]
    flat = [a for d in dims for a in d] + list(axes)
    if len(flat) != len(set(flat)):
        return False  # the indices use the table's axes: the generic plan
    spec = ShardSpec(dims, tuple(a for a in p.mesh.names if a in axes), "sum")
    f = op_factors(op, p.types)
    fa, _ = choose_factor_axes(p, op, f)
    generic = plan_cost(p, op, f, fa)
    own = pending_sum_moved(p, out, spec)
    if not own < generic:
        return False
    b, loc = p.b, op.loc
    n = p.types[table].shape[axis]
    block = shard_size(n, p.mesh.size(axes))
    itype = b.types[li]
    # Clip globally first (gather clamps out-of-range indices), then shift to local rows.
    idx = b.emit("convert_element_type", (li,), loc, new_dtype="int32") if (
        itype.dtype != "int32") else li
    idx = _clip(p, idx, n - 1, loc)
    start = b.emit("mul", (b.axis_index(axes), b.const(block, "int32")), loc)
    start = b.emit("broadcast_in_dim", (start,), loc, shape=b.types[idx].shape,
                   broadcast_dimensions=())
    local = b.emit("sub", (idx, start), loc)
    inside = b.emit("and", (b.emit("ge", (local, b.full(0, b.types[local])), loc),
                            b.emit("lt", (local, b.full(block, b.types[local])), loc)), loc)
    local = _clip(p, local, block - 1, loc)
    rows = b.emit("gather", (lt, local), loc, axis=axis)
    rtype = b.types[rows]
    k = b.types[local].ndim
    mask = b.emit("broadcast_in_dim", (inside,), loc, shape=rtype.shape,
                  broadcast_dimensions=tuple(range(axis, axis + k)))
    rows = b.emit("select", (mask, rows, b.full(0, rtype.strong())), loc)
    p.bind_result(out, rows, spec)
    p.notes[out] = (f"rows looked up where they live {own:.0f} B moved over gathering the "
                    f"table {generic:.0f} B")
    return True


def _clip(p: Partitioner, x: int, top: int, loc: str) -> int:
    """x clipped into [0, top] (int32)."""
    t = p.b.types[x]
    low = p.b.emit("max", (x, p.b.full(0, t)), loc)
    return p.b.emit("min", (low, p.b.full(top, t)), loc)
