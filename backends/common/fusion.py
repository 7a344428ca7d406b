"""Loop fusion: groups elementwise ops, broadcasts, converts, iota, index-remapping views and a
trailing reduce into kernels (producer into consumer; cheap producers are recomputed in each
consumer kernel, except an exp/tanh a reduce kernel also uses: that kernel stores it); a
value used outside its group is stored.

Imports only the compiler core (spmd.ir, spmd.ops, spmd.dtypes) and backends.common.loop_nest.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backends.common.index_maps import (
    IndexMap,
    Refine,
    ReshapeConflict,
    broadcast_index,
    inner_sizes,
    reshape_index,
    transpose_index,
)
from backends.common.loop_nest import (
    KernelSpec,
    Node,
    coalesce,
    contiguous_strides,
    small_reduction_last,
)
from spmd import dtypes
from spmd.ir.graph import Graph, Op
from spmd.ops import REGISTRY, Trait

ELEMENTWISE = frozenset(name for name, d in REGISTRY.items() if d.has(Trait.ELEMENTWISE))
REDUCE_KINDS = frozenset({"sum", "max", "min", "prod", "and", "or"})


@dataclass(frozen=True)
class Row:
    """How an op other than an elementwise one (Trait.ELEMENTWISE: a scalar op) takes part
    in a fused loop. remap: a member read through an index map of its operand (never a
    root unless `root`); iota: a member computed from the loop index; reduce: the root
    that folds the loop's inner dims; literal: a scalar constant inlined as a literal."""

    role: str
    root: bool = False  # may start a group (a kernel runs at it)
    regroups: bool = False  # a remap that merges and splits dims (a member only when it can)
    # remap: (graph, op, index map of the result, loop sizes) -> index map of the operand
    operand_index: Callable[..., IndexMap] | None = None


NO_ROW = Row("")


@dataclass(frozen=True)
class Scalar:
    """What an elementwise op's scalar code costs (an op without a row: a few instructions).
    libm: a call, not vectorized (stored once rather than recomputed); poly: a float32
    polynomial (float64 calls libm) a reduce kernel that also uses it stores for later
    kernels; float_only: integer operands run through the reference (not fused)."""

    cost: str
    float_only: bool = False


LIBM, POLY = Scalar("libm"), Scalar("poly")
SCALAR_COSTS: dict[str, Scalar] = {
    **dict.fromkeys(("sin", "cos", "log", "rem", "erf", "log1p", "expm1", "tan", "atan2"), LIBM),
    "pow": Scalar("libm", float_only=True),
    **dict.fromkeys(("exp", "tanh", "logistic"), POLY),
}
CHEAP = Scalar("cheap")


@dataclass
class Kernel:
    """A fused group of graph ops and its loop-nest spec."""

    spec: KernelSpec
    ops: list[Op]
    inputs: list[int]  # value ids bound to args[0:n_in]
    outputs: list[int]  # value ids bound to args[n_in:]
    root: int  # index in the graph of the op the kernel runs at
    reduce_op: Op | None = None
    name: str = ""


@dataclass
class _Group:
    root: int
    domain: tuple[int, ...]
    members: set[int] = field(default_factory=set)
    extra: list[int] = field(default_factory=list)


MAX_COPIES = 4  # a cheap producer is recomputed in at most this many kernels


def role(op: Op) -> str:
    return ROWS.get(op.name, NO_ROW).role


def is_scalar_constant(op: Op) -> bool:
    return role(op) == "literal" and op.types[0].ndim == 0


def fusible(op: Op, graph: Graph) -> bool:
    """Whether the op can be a member of a fused loop."""
    if REGISTRY[op.name].has(Trait.ELEMENTWISE):
        in_dtype = graph.types[op.inputs[0]].dtype if op.inputs else op.types[0].dtype
        return dtypes.is_float(in_dtype) or not SCALAR_COSTS.get(op.name, CHEAP).float_only
    row = ROWS.get(op.name, NO_ROW)
    if row.role == "reduce":
        return op.attrs["kind"] in REDUCE_KINDS
    return row.root


def inlinable(op: Op, graph: Graph, excluded: frozenset[int] = frozenset()) -> bool:
    """Index-remapping views that may be members of a kernel (never its root): a transpose,
    a reshape that only splits and merges dims."""
    row = ROWS.get(op.name, NO_ROW)
    if row.role != "remap" or row.root or id(op) in excluded:
        return False
    return not row.regroups or splits_and_merges(graph.types[op.inputs[0]].shape, op.types[0].shape)


def splits_and_merges(in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> bool:
    """Whether a row-major reshape only splits and merges dims, so that a loop over the
    finer of the two shapes indexes both (true when the running products of both shapes
    together form a chain of divisors: (2,4,n) <-> (8,n) yes, (4,6) <-> (3,8) no)."""
    if 0 in in_shape or 0 in out_shape:
        return [n for n in in_shape if n != 1] == [n for n in out_shape if n != 1]
    bounds = sorted(
        set(itertools.accumulate(in_shape, operator.mul))
        | set(itertools.accumulate(out_shape, operator.mul))
    )
    return all(b % a == 0 for a, b in itertools.pairwise(bounds))


def duplicable(op: Op, graph: Graph) -> bool:
    """Cheap enough to recompute in every kernel that uses it instead of storing it."""
    cost = SCALAR_COSTS.get(op.name, CHEAP).cost
    if role(op) == "reduce" or cost == "libm":
        return False
    if cost == "poly":
        return graph.types[op.inputs[0]].dtype != "float64"  # float64 calls libm
    return True


def group_ops(graph: Graph, excluded: frozenset[int] = frozenset()) -> list[_Group]:
    """Reverse walk: an op joins its users' group when all of them are in one group; a cheap
    op used by several groups joins (is recomputed in) each of them; a result joins only a
    group of its own shape (which stores it)."""
    users: dict[int, list[int]] = {}
    for i, op in enumerate(graph.ops):
        for v in op.inputs:
            users.setdefault(v, []).append(i)
    results = set(graph.results)
    groups_of: dict[int, list[_Group]] = {}
    groups: list[_Group] = []
    for i in reversed(range(len(graph.ops))):
        op = graph.ops[i]
        root_ok = fusible(op, graph)
        if not (root_ok or inlinable(op, graph, excluded)) or len(op.outputs) != 1:
            continue
        out = op.outputs[0]
        owners = _owners(users.get(out, []), groups_of)
        first = _reduce_that_stores(op, graph, owners, out in results)
        if first is not None:  # computed once in the reduce kernel, which stores it
            first.members.add(i)
            first.extra.append(out)
            groups_of[i] = [first]
            continue
        if owners and role(op) != "reduce" and _may_join(op, graph, owners, out in results):
            for owner in owners:
                owner.members.add(i)
                if out in results:
                    owner.extra.append(out)
            groups_of[i] = owners
            continue
        if not root_ok:
            continue
        domain = graph.types[op.inputs[0]].shape if role(op) == "reduce" else op.types[0].shape
        group = _Group(i, domain, {i})
        groups_of[i] = [group]
        groups.append(group)
    return sorted(groups, key=lambda g: g.root)


def _owners(user_ops: list[int], groups_of: dict[int, list[_Group]]) -> list[_Group] | None:
    """The distinct groups of all users, or None when some user is in no group."""
    found: dict[int, _Group] = {}
    for u in user_ops:
        if u not in groups_of:
            return None
        for g in groups_of[u]:
            found[id(g)] = g
    return list(found.values()) or None


def _reduce_that_stores(
    op: Op, graph: Graph, owners: list[_Group] | None, is_result: bool
) -> _Group | None:
    """For a transcendental used by a reduce kernel and by later kernels (softmax's exp): the
    reduce kernel, which then stores it for the others (measured faster than recomputing)."""
    if (
        is_result
        or not owners
        or len(owners) < 2
        or SCALAR_COSTS.get(op.name, CHEAP).cost != "poly"
        or not duplicable(op, graph)
    ):
        return None
    first = min(owners, key=lambda g: g.root)
    if role(graph.ops[first.root]) != "reduce" or first.domain != op.types[0].shape:
        return None
    return first


def _may_join(op: Op, graph: Graph, owners: list[_Group], is_result: bool) -> bool:
    if is_result:
        return len(owners) == 1 and owners[0].domain == op.types[0].shape
    return len(owners) == 1 or (len(owners) <= MAX_COPIES and duplicable(op, graph))


def fuse(graph: Graph) -> list[Kernel]:
    """group_ops + build_kernel; a reshape that cannot share its group's loop is left out of
    fusion (it stays a view) and the graph is grouped again."""
    excluded: frozenset[int] = frozenset()
    while True:
        try:
            return [build_kernel(graph, group) for group in group_ops(graph, excluded)]
        except ReshapeConflict as conflict:
            excluded |= {id(conflict.op)}


def build_kernel(graph: Graph, group: _Group) -> Kernel:
    """Turn a group into a KernelSpec: members are inlined at the index map they are used
    through (broadcasts, reshapes and transposes remap dims), others are loads. The loop
    runs over the group's domain, refined where a reshape member splits one of its dims."""
    factors = [[n] for n in group.domain]  # each domain dim as the loop dims it splits into
    while True:
        try:
            return _build(graph, group, factors)
        except Refine as refine:
            flat = [(d, k) for d, parts in enumerate(factors) for k in range(len(parts))]
            d, k = flat[refine.dim]
            factors[d][k : k + 1] = refine.sizes


def _build(graph: Graph, group: _Group, factors: list[list[int]]) -> Kernel:
    sizes = tuple(n for parts in factors for n in parts)
    loop_dims = iter(range(len(sizes)))
    identity: IndexMap = tuple(tuple(next(loop_dims) for _ in parts) for parts in factors)
    nodes: list[Node] = []
    memo: dict[tuple[int, IndexMap], int] = {}
    loads: dict[tuple[int, tuple[int, ...]], int] = {}
    inputs: list[int] = []
    member_ids = {id(graph.ops[i]) for i in group.members}

    def add(node: Node) -> int:
        nodes.append(node)
        return len(nodes) - 1

    def strides_of(shape: tuple[int, ...], index: IndexMap) -> tuple[int, ...]:
        strides = [0] * len(sizes)
        for own, dims in zip(contiguous_strides(shape), index):
            for d, inner in zip(dims, inner_sizes(dims, sizes)):
                strides[d] += own * inner
        return tuple(strides)

    def value(vid: int, index: IndexMap) -> int:
        if (vid, index) not in memo:
            memo[vid, index] = _node(vid, index)
        return memo[vid, index]

    def _node(vid: int, index: IndexMap) -> int:
        producer = graph.producers.get(vid)
        if producer is not None and is_scalar_constant(producer):
            return add(
                ("const", producer.types[0].dtype, np.asarray(producer.attrs["value"]).item())
            )
        if producer is None or id(producer) not in member_ids or role(producer) == "reduce":
            strides = strides_of(graph.types[vid].shape, index)
            if vid not in inputs:
                inputs.append(vid)
            if (vid, strides) not in loads:
                loads[vid, strides] = add(
                    ("load", graph.types[vid].dtype, inputs.index(vid), strides)
                )
            return loads[vid, strides]
        op, t = producer, producer.types[0]
        row = ROWS.get(op.name, NO_ROW)
        if row.operand_index is not None:
            return value(op.inputs[0], row.operand_index(graph, op, index, sizes))
        if role(op) == "iota":
            dims = index[op.attrs["dimension"]]
            strides = [0] * len(sizes)
            for d, inner in zip(dims, inner_sizes(dims, sizes)):
                strides[d] = inner
            return add(("iota", t.dtype, tuple(strides)))
        args = tuple(value(v, index) for v in op.inputs)
        attrs = tuple(sorted((k, v) for k, v in op.attrs.items() if k != "weak"))
        return add(("op", t.dtype, op.name, attrs, args))

    root = graph.ops[group.root]
    reduce = None
    stored = list(dict.fromkeys(group.extra))
    if role(root) == "reduce":
        axes = set(root.attrs["axes"])
        kept = tuple(dims for d, dims in enumerate(identity) if d not in axes)
        strides = strides_of(root.types[0].shape, kept)
        reduce = (root.attrs["kind"], value(root.inputs[0], identity), strides)
    else:
        stored = [root.outputs[0]] + [v for v in stored if v != root.outputs[0]]
    flat = contiguous_strides(sizes)
    store_nodes = [value(v, identity) for v in stored]
    n_in = len(inputs)
    stores = tuple((node, n_in + k, flat) for k, node in enumerate(store_nodes))
    outputs = stored + ([root.outputs[0]] if reduce else [])
    reduce_spec = (reduce[0], reduce[1], n_in + len(stored), reduce[2]) if reduce else None
    arg_dtypes = tuple(graph.types[v].dtype for v in inputs + outputs)
    ops = [graph.ops[i] for i in sorted(group.members)]
    spec = KernelSpec(sizes, arg_dtypes, n_in, tuple(nodes), stores, reduce_spec)
    spec = coalesce(small_reduction_last(spec))
    return Kernel(
        spec,
        ops,
        inputs,
        outputs,
        group.root,
        root if reduce else None,
        name=f"k{group.root}_{root.name}",
    )


ROWS: dict[str, Row] = {
    "broadcast_in_dim": Row("remap", root=True, operand_index=broadcast_index),
    "transpose": Row("remap", operand_index=transpose_index),
    "reshape": Row("remap", regroups=True, operand_index=reshape_index),
    "iota": Row("iota", root=True),
    "reduce": Row("reduce", root=True),
    "constant": Row("literal"),
}
