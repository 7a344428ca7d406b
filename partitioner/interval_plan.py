"""A slice of a sharded dim whose result is wanted in another layout (e.g. replicated):
first realign the window onto an even split of the result over the same axes, moving only
the rows each device's new block lacks (pieces of any length, by permutes), then let the
resharding planner gather the small blocks. Gathering the whole dim first moves the full
shards; this moves about the window (XLA's plan for slices of uneven dims).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from partitioner.builder import ProgramBuilder
from partitioner.cost import reshard_moved
from partitioner.permute_plan import MAX_DEVICES, schedule
from partitioner.spec import AxisTuple, ShardSpec, shard_size
from spmd.ir.graph import Op

if TYPE_CHECKING:
    from partitioner.partition import Partitioner

Interval = tuple[int, int, tuple[int, ...], tuple[int, ...], int]  # as permute_plan's Piece
MAX_ROUNDS = 8


def intervals(n: int, k: int, start: int, size: int) -> list[Interval]:
    """(sender, receiver, offset in the sender's shard, offset in the receiver's block,
    length): shard i holds rows [i*s, (i+1)*s) of n; block j wants the window's rows
    [j*c, (j+1)*c) (c = ceil(size / k))."""
    s, c = shard_size(n, k), shard_size(size, k)
    out = []
    for j in range(k):
        lo_j, hi_j = start + j * c, start + min((j + 1) * c, size)
        for i in range(k):
            lo, hi = max(lo_j, i * s), min(hi_j, (i + 1) * s, n)
            if lo < hi:
                out.append((i, j, (lo - i * s,), (lo - lo_j,), hi - lo))
    return out


def realign_then_gather(p: Partitioner, op: Op) -> bool:
    """Partition the slice as realign (permutes of window rows) + the planner's gather;
    False where it does not apply or the generic plan moves fewer bytes."""
    from partitioner.choose import generic_cost

    v, out = op.inputs[0], op.outputs[0]
    lv, spec = p.env[v]
    gtype = p.types[v]
    starts, limits, strides = (op.attrs[k] for k in ("start_indices", "limit_indices", "strides"))
    cut = [
        d for d, (s, lim, n) in enumerate(zip(starts, limits, gtype.shape)) if (s, lim) != (0, n)
    ]
    sharded = [d for d in cut if spec.dims[d]]
    if spec.partial or any(st != 1 for st in strides) or len(sharded) != 1:
        return False
    d = sharded[0]
    axes = spec.dims[d]
    k = p.mesh.size(axes)
    if k > MAX_DEVICES:
        return False  # the schedule is built per device pair in Python
    size = limits[d] - starts[d]
    pieces = [x for x in intervals(gtype.shape[d], k, starts[d], size) if x[0] != x[1]]
    rounds = schedule(pieces)
    local = [x for x in intervals(gtype.shape[d], k, starts[d], size) if x[0] == x[1]]
    if len(rounds) > MAX_ROUNDS:
        return False
    lt = p.b.types[lv]
    row = (
        lt.nbytes
        // max(lt.size, 1)
        * int(
            np.prod(
                [
                    lim - s if not spec.dims[i] else n
                    for i, (s, lim, n) in enumerate(zip(starts, limits, lt.shape))
                    if i != d
                ]
            )
        )
    )
    inter = ShardSpec(spec.dims)
    want = p.dims_of.get(out, spec.dims)
    moved = sum(max(x[4] for x in r) for r in rounds) * row + reshard_moved(
        p.mesh, p.types[out], inter, want
    )
    generic = generic_cost(p, op)
    if not moved < generic:
        return False
    reason = (
        f"slice of dim {d}: window rows realigned onto an even split, then gathered "
        f"({moved:.0f} B moved over gathering the dim {generic:.0f} B)"
    )
    x = _cut_unsharded(p.b, lv, spec, starts, limits, op.loc)
    lx = _realign(p.b, x, d, axes, rounds, local, shard_size(size, k), op.loc, reason)
    p.bind_result(out, lx, inter)
    p.notes[out] = reason
    return True


def _cut_unsharded(
    b: ProgramBuilder,
    x: int,
    spec: ShardSpec,
    starts: tuple[int, ...],
    limits: tuple[int, ...],
    loc: str,
) -> int:
    """Static slice of the dims that are not sharded (they are whole on every device)."""
    t = b.types[x]
    lo = tuple(s if not axes else 0 for s, axes in zip(starts, spec.dims))
    hi = tuple(lim if not axes else n for lim, n, axes in zip(limits, t.shape, spec.dims))
    if lo == (0,) * t.ndim and hi == t.shape:
        return x
    return b.emit("slice", (x,), loc, start_indices=lo, limit_indices=hi, strides=(1,) * t.ndim)


def _realign(
    b: ProgramBuilder,
    x: int,
    d: int,
    axes: AxisTuple,
    rounds: list[list[Interval]],
    local: list[Interval],
    c: int,
    loc: str,
    reason: str,
) -> int:
    """Each device's block of c rows of the window, built by masked writes (a round's
    pieces are padded to its longest; only each piece's own length is written). The
    local copies (at most one per device) are the last round, without a permute."""
    t = b.types[x]
    longest = max([iv[4] for r in rounds for iv in r] + [iv[4] for iv in local] + [1])
    k = b.mesh.size(axes)
    me = b.axis_index(axes)
    widen = tuple((0, longest if i == d else 0, 0) for i in range(t.ndim))
    x = b.emit("pad", (x, b.const(0, t.dtype)), loc, padding_config=widen)
    shape = tuple(c + longest if i == d else n for i, n in enumerate(t.shape))
    out = b.full(0, t.with_shape(shape).strong())
    for r, batch in enumerate(rounds + ([local] if local else [])):
        width = max(iv[4] for iv in batch)
        send, recv, length = [0] * k, [0] * k, [0] * k
        for i, j, so, do, n in batch:
            send[i], recv[j], length[j] = so[0], do[0], n
        piece = _slice_at(b, x, d, _lookup(b, me, send, loc), width, loc)
        if r < len(rounds):
            piece = b.collective(
                "collective_permute",
                piece,
                axes,
                loc,
                f"{reason}: round {r + 1} of {len(rounds)}",
                pairs=tuple((i, j) for i, j, *_ in batch),
            )
        at = _lookup(b, me, recv, loc)
        here = _slice_at(b, out, d, at, width, loc)
        ptype = b.types[piece]
        rows = b.emit("iota", (), loc, dtype="int32", shape=ptype.shape, dimension=d)
        limit = b.emit(
            "broadcast_in_dim",
            (_lookup(b, me, length, loc),),
            loc,
            shape=ptype.shape,
            broadcast_dimensions=(),
        )
        keep = b.emit("lt", (rows, limit), loc)
        piece = b.emit("select", (keep, piece, here), loc)
        zero = b.const(0, "int32")
        starts = tuple(at if i == d else zero for i in range(t.ndim))
        out = b.emit("dynamic_update_slice", (out, piece, *starts), loc)
    limits = tuple(c if i == d else n for i, n in enumerate(t.shape))
    return b.emit(
        "slice",
        (out,),
        loc,
        start_indices=(0,) * t.ndim,
        limit_indices=limits,
        strides=(1,) * t.ndim,
    )


def _lookup(b: ProgramBuilder, me: int, table: list[int], loc: str) -> int:
    if len(set(table)) == 1:
        return b.const(table[0], "int32")
    return b.emit("gather", (b.const(np.array(table, dtype=np.int32), "int32"), me), loc, axis=0)


def _slice_at(b: ProgramBuilder, x: int, d: int, at: int, width: int, loc: str) -> int:
    t = b.types[x]
    zero = b.const(0, "int32")
    starts = tuple(at if i == d else zero for i in range(t.ndim))
    sizes = tuple(width if i == d else n for i, n in enumerate(t.shape))
    return b.emit("dynamic_slice", (x, *starts), loc, slice_sizes=sizes)
