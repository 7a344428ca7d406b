"""Collectives of a batched program as ordinary ops on the device axis: the axis is split
into the mesh, the group's axes are brought together as one axis K in group order, and
all_reduce / all_gather / reduce_scatter / all_to_all / collective_permute become
reduce, transpose, reshape, broadcast and slices over it. Kinds without a rule (bool
reductions) stay collectives, run per group by `Batched.run_op`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from spmd import dtypes
from spmd.ir.graph import Op
from spmd.mesh import axis_groups
from spmd.ops.collective import REDUCERS

if TYPE_CHECKING:
    from partitioner.device_batching import Batcher


class _Group:
    """The layout of one collective's groups on the mesh."""

    def __init__(self, b: Batcher, axes: Any):
        self.b = b
        self.pos = [b.axis_names.index(a) for a in axes]
        self.rest = [i for i in range(len(b.mesh_shape)) if i not in self.pos]
        self.rest_sizes = tuple(b.mesh_shape[i] for i in self.rest)
        self.group_sizes = tuple(b.mesh_shape[i] for i in self.pos)
        self.k = math.prod(self.group_sizes)
        self.r = len(self.rest)

    def major(self, x: int) -> int:
        """(N,)+s -> rest + (K,) + s, K the group index in group order."""
        b = self.b
        s = b.types[x].shape[1:]
        m = len(b.mesh_shape)
        y = b.emit("reshape", (x,), new_sizes=b.mesh_shape + s)
        order = self.rest + self.pos + list(range(m, m + len(s)))
        if order != list(range(len(order))):
            y = b.emit("transpose", (y,), permutation=tuple(order))
        return b.emit("reshape", (y,), new_sizes=self.rest_sizes + (self.k,) + s)

    def unmajor(self, y: int) -> int:
        """rest + (K,) + tail -> (N,)+tail: member K of each group gets its row."""
        b = self.b
        tail = b.types[y].shape[self.r + 1 :]
        y = b.emit("reshape", (y,), new_sizes=self.rest_sizes + self.group_sizes + tail)
        m = len(b.mesh_shape)
        where = {axis: i for i, axis in enumerate(self.rest + self.pos)}
        order = [where[i] for i in range(m)] + list(range(m, m + len(tail)))
        if order != list(range(len(order))):
            y = b.emit("transpose", (y,), permutation=tuple(order))
        return b.emit("reshape", (y,), new_sizes=(b.n,) + tail)

    def broadcast(self, y: int) -> int:
        """rest + tail -> (N,)+tail: every member of a group gets its group's value (one
        broadcast straight into mesh order; the final reshape is a view)."""
        b = self.b
        tail = b.types[y].shape[self.r :]
        m = len(b.mesh_shape)
        dims = tuple(self.rest) + tuple(range(m, m + len(tail)))
        full = b.emit(
            "broadcast_in_dim", (y,), shape=b.mesh_shape + tail, broadcast_dimensions=dims
        )
        return b.emit("reshape", (full,), new_sizes=(b.n,) + tail)

    def reduce(self, x: int, kind: str) -> int:
        """rest + tail: the group's combination of x, reduced over the group's mesh axes in
        place (mesh order: a float sum may round differently from group order)."""
        b = self.b
        s = b.types[x].shape[1:]
        y = b.emit("reshape", (x,), new_sizes=b.mesh_shape + s)
        return b.emit("reduce", (y,), kind=kind, axes=tuple(sorted(self.pos)))


def batch_collective(b: Batcher, op: Op, x: int) -> int:
    """The collective `op` on batched x, as ordinary ops (or kept, to run by numpy)."""
    a = op.attrs
    rule, combines = RULES[op.name]
    if combines and (a.get("kind", "sum") not in REDUCERS or b.types[x].dtype == "bool"):
        return _keep(b, op, x)
    g = _Group(b, a["axes"])
    if g.k == 1 and "pairs" not in a:  # one device per group: x itself (a permute may zero it)
        return x
    return rule(b, g, op, x)


def _all_reduce(b: Batcher, g: _Group, op: Op, x: int) -> int:
    return g.broadcast(g.reduce(x, op.attrs.get("kind", "sum")))


def _all_gather(b: Batcher, g: _Group, op: Op, x: int) -> int:
    return g.broadcast(_move_k_into(b, g, g.major(x), op.attrs["dim"], b.types[x].ndim - 1))


def _reduce_scatter(b: Batcher, g: _Group, op: Op, x: int) -> int:
    return _scatter(b, g, g.reduce(x, op.attrs.get("kind", "sum")), op.attrs["dim"])


def _all_to_all_rule(b: Batcher, g: _Group, op: Op, x: int) -> int:
    return _all_to_all(b, g, x, op.attrs["split_dim"], op.attrs["concat_dim"])


def _permute_rule(b: Batcher, g: _Group, op: Op, x: int) -> int:
    return _permute(b, op, x)


# Each collective's rule on the device axis, and whether it combines values (a reduction
# kind without a rule, or bools, keeps the collective).
RULES: dict[str, tuple[Callable[[Batcher, _Group, Op, int], int], bool]] = {
    "all_reduce": (_all_reduce, True),
    "all_gather": (_all_gather, False),
    "reduce_scatter": (_reduce_scatter, True),
    "all_to_all": (_all_to_all_rule, False),
    "collective_permute": (_permute_rule, False),
}


def _move_k_into(b: Batcher, g: _Group, y: int, dim: int, rank: int) -> int:
    """rest + (K,) + s -> rest + s with dim `dim` of size K * s[dim] (K major)."""
    r = g.r
    order = (
        list(range(r))
        + [r + 1 + i for i in range(dim)]
        + [r]
        + [r + 1 + i for i in range(dim, rank)]
    )
    y = b.emit("transpose", (y,), permutation=tuple(order))
    shape = list(b.types[y].shape)
    merged = shape[: r + dim] + [shape[r + dim] * shape[r + dim + 1]] + shape[r + dim + 2 :]
    return b.emit("reshape", (y,), new_sizes=tuple(merged))


def _scatter(b: Batcher, g: _Group, total: int, dim: int) -> int:
    """rest + s -> member i gets block i of dim `dim`."""
    r = g.r
    shape = b.types[total].shape
    s = shape[r:]
    block = s[dim] // g.k
    split = shape[: r + dim] + (g.k, block) + shape[r + dim + 1 :]
    y = b.emit("reshape", (total,), new_sizes=split)
    order = list(range(r)) + [r + dim] + [i for i in range(r, len(split)) if i != r + dim]
    y = b.emit("transpose", (y,), permutation=tuple(order))
    return g.unmajor(y)


def _all_to_all(b: Batcher, g: _Group, x: int, split: int, concat: int) -> int:
    """Member dst gets block dst (of split dim) from every src, concatenated along concat."""
    s = b.types[x].shape[1:]
    r = g.r
    y = g.major(x)  # rest, src, s
    block = s[split] // g.k
    y = b.emit(
        "reshape", (y,), new_sizes=g.rest_sizes + (g.k,) + s[:split] + (g.k, block) + s[split + 1 :]
    )

    def content(i: int) -> int:  # the axis holding per-device dim i after the split
        if i < split:
            return r + 1 + i
        return r + 2 + i if i > split else r + 2 + split

    order = list(range(r)) + [r + 1 + split]  # rest, dst
    for i in range(len(s)):
        order += [r, content(i)] if i == concat else [content(i)]
    y = b.emit("transpose", (y,), permutation=tuple(order))
    shape = list(b.types[y].shape)
    at = r + 1 + concat
    merged = shape[:at] + [shape[at] * shape[at + 1]] + shape[at + 2 :]
    return g.unmajor(b.emit("reshape", (y,), new_sizes=tuple(merged)))


def _permute(b: Batcher, op: Op, x: int) -> int:
    """Device d gets its source's row (a static gather on the device axis), zeros when
    nothing is sent to it: runs of consecutive sources become one slice each."""
    source: list[int | None] = [None] * b.n
    for members in axis_groups(b.axis_names, b.mesh_shape, op.attrs["axes"]):
        for src, dst in op.attrs["pairs"]:
            source[members[dst]] = members[src]
    s = b.types[x].shape[1:]
    pieces, d = [], 0
    while d < b.n:
        e = d + 1
        first = source[d]
        while e < b.n and (source[e] is None if first is None else source[e] == first + (e - d)):
            e += 1
        if first is None:
            zero = b.constant(np.zeros((), dtypes.to_numpy(b.types[x].dtype)), batched=False)
            pieces.append(
                b.emit("broadcast_in_dim", (zero,), shape=(e - d,) + s, broadcast_dimensions=())
            )
        else:
            pieces.append(
                b.emit(
                    "slice",
                    (x,),
                    start_indices=(first,) + (0,) * len(s),
                    limit_indices=(first + e - d,) + s,
                    strides=(1,) * (len(s) + 1),
                )
            )
        d = e
    for p in pieces:
        b.batched[p] = True
    if len(pieces) == 1:
        return pieces[0] if source != list(range(b.n)) else x
    return b.emit("concatenate", pieces, op.loc, dimension=0)


def _keep(b: Batcher, op: Op, x: int) -> int:
    """The collective stays in the batched program; `Batched.run_op` executes it."""
    return b.run_per_device(op, [x])[0]
