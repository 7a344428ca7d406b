"""Loop fusion: groups elementwise ops, broadcasts, converts, iota, index-remapping views and a
trailing reduce into kernels (producer into consumer; cheap producers are recomputed in each
consumer kernel, except an exp/tanh a reduce kernel also uses: that kernel stores it); a
value used outside its group is stored.

Imports only the compiler core (spmd.ir, spmd.ops, spmd.dtypes).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from spmd import dtypes
from spmd.ir.graph import Graph, Op
from spmd.ops import elementwise

ELEMENTWISE = frozenset(d.name for d in elementwise.OPS
                        if d.factors is elementwise.elementwise_factors)
REDUCE_KINDS = frozenset({"sum", "max", "min", "prod", "and", "or"})

# A node of a kernel's expression DAG; every node has a dtype (the value's dtype name):
#   ("load", dtype, arg, strides)   ("const", dtype, value)   ("iota", dtype, strides)
#   ("op", dtype, name, attrs, input_node_ids)
Node = tuple


@dataclass(frozen=True)
class KernelSpec:
    """A fused loop nest over `domain`: loads, an expression DAG, stores and an optional reduce.

    Args are buffers: loads refer to args[0:n_in], stores and the reduce to args[n_in:].
    Strides are in elements per domain dim (0 = broadcast / reduced dim).
    """

    domain: tuple[int, ...]
    arg_dtypes: tuple[str, ...]
    n_in: int
    nodes: tuple[Node, ...]
    stores: tuple[tuple[int, int, tuple[int, ...]], ...]  # (node, arg, strides)
    reduce: tuple[str, int, int, tuple[int, ...]] | None = None  # (kind, node, arg, strides)

    @property
    def reduce_mode(self) -> str:
        """'' (no reduce), 'trailing' (register accumulator) or 'memory' (accumulate in place)."""
        if self.reduce is None:
            return ""
        strides = self.reduce[3]
        reduced = [i for i, s in enumerate(strides) if s == 0]
        if not reduced or reduced == list(range(reduced[0], len(strides))):
            return "trailing"
        return "memory"

    @property
    def splittable(self) -> bool:
        """Whether chunks of the outer dim may run on different threads."""
        if not self.domain:
            return False
        return self.reduce is None or self.reduce[3][0] != 0


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


# Ops whose scalar code is a libm call (not vectorized): stored once rather than recomputed.
EXPENSIVE = frozenset({"sin", "cos", "log", "pow", "rem", "erf", "log1p", "expm1", "tan",
                       "atan2"})
MAX_COPIES = 4  # a cheap producer is recomputed in at most this many kernels
STORE_IN_REDUCE = frozenset({"exp", "tanh", "logistic"})


def is_scalar_constant(op: Op) -> bool:
    return op.name == "constant" and op.types[0].ndim == 0


def fusible(op: Op, graph: Graph) -> bool:
    """Whether the op can be a member of a fused loop."""
    if op.name in ELEMENTWISE:
        in_dtype = graph.types[op.inputs[0]].dtype if op.inputs else op.types[0].dtype
        return not (op.name == "pow" and not dtypes.is_float(in_dtype))
    if op.name in ("broadcast_in_dim", "iota"):
        return True
    return op.name == "reduce" and op.attrs["kind"] in REDUCE_KINDS


def inlinable(op: Op, graph: Graph) -> bool:
    """Index-remapping views that may be members of a kernel (never its root)."""
    if op.name == "transpose":
        return True
    if op.name != "reshape":
        return False
    in_shape = graph.types[op.inputs[0]].shape
    return [n for n in in_shape if n != 1] == [n for n in op.types[0].shape if n != 1]


def duplicable(op: Op, graph: Graph) -> bool:
    """Cheap enough to recompute in every kernel that uses it instead of storing it."""
    if op.name == "reduce" or op.name in EXPENSIVE:
        return False
    if op.name in ("exp", "tanh", "logistic"):
        return graph.types[op.inputs[0]].dtype != "float64"  # float64 calls libm
    return True


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def group_ops(graph: Graph) -> list[_Group]:
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
        if not (root_ok or inlinable(op, graph)) or len(op.outputs) != 1:
            continue
        out = op.outputs[0]
        owners = _owners(users.get(out, []), groups_of)
        first = _reduce_that_stores(op, graph, owners, out in results)
        if first is not None:  # computed once in the reduce kernel, which stores it
            first.members.add(i)
            first.extra.append(out)
            groups_of[i] = [first]
            continue
        if owners and op.name != "reduce" and _may_join(op, graph, owners, out in results):
            for owner in owners:
                owner.members.add(i)
                if out in results:
                    owner.extra.append(out)
            groups_of[i] = owners
            continue
        if not root_ok:
            continue
        domain = graph.types[op.inputs[0]].shape if op.name == "reduce" else op.types[0].shape
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


def _reduce_that_stores(op: Op, graph: Graph, owners: list[_Group] | None, is_result: bool
                        ) -> _Group | None:
    """For a transcendental used by a reduce kernel and by later kernels (softmax's exp): the
    reduce kernel, which then stores it for the others (measured faster than recomputing)."""
    if (not STORE_IN_REDUCE or is_result or not owners or len(owners) < 2
            or op.name not in STORE_IN_REDUCE or not duplicable(op, graph)):
        return None
    first = min(owners, key=lambda g: g.root)
    if graph.ops[first.root].name != "reduce" or first.domain != op.types[0].shape:
        return None
    return first


def _may_join(op: Op, graph: Graph, owners: list[_Group], is_result: bool) -> bool:
    if is_result:
        return len(owners) == 1 and owners[0].domain == op.types[0].shape
    return len(owners) == 1 or (len(owners) <= MAX_COPIES and duplicable(op, graph))


IndexMap = tuple  # per dim of a value: the domain dim indexing it, or None (index 0)


def build_kernel(graph: Graph, group: _Group) -> Kernel:
    """Turn a group into a KernelSpec: members are inlined at the index map they are used
    through (broadcasts, unit reshapes and transposes remap dims), others are loads."""
    domain = group.domain
    identity: IndexMap = tuple(range(len(domain)))
    nodes: list[Node] = []
    memo: dict[tuple[int, IndexMap], int] = {}
    loads: dict[tuple[int, tuple[int, ...]], int] = {}
    inputs: list[int] = []
    member_ids = {id(graph.ops[i]) for i in group.members}

    def add(node: Node) -> int:
        nodes.append(node)
        return len(nodes) - 1

    def strides_of(vid: int, index: IndexMap) -> tuple[int, ...]:
        strides = [0] * len(domain)
        for own, d in zip(contiguous_strides(graph.types[vid].shape), index):
            if d is not None:
                strides[d] += own
        return tuple(strides)

    def value(vid: int, index: IndexMap) -> int:
        if (vid, index) not in memo:
            memo[vid, index] = _node(vid, index)
        return memo[vid, index]

    def _node(vid: int, index: IndexMap) -> int:
        producer = graph.producers.get(vid)
        if producer is not None and is_scalar_constant(producer):
            return add(("const", producer.types[0].dtype,
                        np.asarray(producer.attrs["value"]).item()))
        if producer is None or id(producer) not in member_ids or producer.name == "reduce":
            strides = strides_of(vid, index)
            if vid not in inputs:
                inputs.append(vid)
            if (vid, strides) not in loads:
                loads[vid, strides] = add(("load", graph.types[vid].dtype, inputs.index(vid),
                                           strides))
            return loads[vid, strides]
        op, t = producer, producer.types[0]
        if op.name in ("broadcast_in_dim", "reshape", "transpose"):
            return value(op.inputs[0], _operand_index(graph, op, index))
        if op.name == "iota":
            d = index[op.attrs["dimension"]]
            strides = tuple(int(k == d) for k in range(len(domain)))
            return add(("iota", t.dtype, strides))
        args = tuple(value(v, index) for v in op.inputs)
        attrs = tuple(sorted((k, v) for k, v in op.attrs.items() if k != "weak"))
        return add(("op", t.dtype, op.name, attrs, args))

    root = graph.ops[group.root]
    reduce = None
    stored = list(dict.fromkeys(group.extra))
    if root.name == "reduce":
        axes = set(root.attrs["axes"])
        kept = iter(contiguous_strides(root.types[0].shape))
        strides = tuple(0 if d in axes else next(kept) for d in range(len(domain)))
        reduce = (root.attrs["kind"], value(root.inputs[0], identity), strides)
    else:
        stored = [root.outputs[0]] + [v for v in stored if v != root.outputs[0]]
    flat = contiguous_strides(domain)
    store_nodes = [value(v, identity) for v in stored]
    n_in = len(inputs)
    stores = tuple((node, n_in + k, flat) for k, node in enumerate(store_nodes))
    outputs = stored + ([root.outputs[0]] if reduce else [])
    reduce_spec = (reduce[0], reduce[1], n_in + len(stored), reduce[2]) if reduce else None
    arg_dtypes = tuple(graph.types[v].dtype for v in inputs + outputs)
    ops = [graph.ops[i] for i in sorted(group.members)]
    spec = coalesce(KernelSpec(domain, arg_dtypes, n_in, tuple(nodes), stores, reduce_spec))
    return Kernel(spec, ops, inputs, outputs, group.root, root if reduce else None,
                  name=f"k{group.root}_{root.name}")


def _operand_index(graph: Graph, op: Op, index: IndexMap) -> IndexMap:
    """The index map of a view-like op's operand, given the map of its result."""
    shape = graph.types[op.inputs[0]].shape
    if op.name == "transpose":
        found: list[int | None] = [None] * len(shape)
        for k, p in enumerate(op.attrs["permutation"]):
            found[p] = index[k]
        return tuple(found)
    if op.name == "broadcast_in_dim":
        return tuple(index[d] if n != 1 else None
                     for d, n in zip(op.attrs["broadcast_dimensions"], shape))
    kept = iter([d for d, n in zip(index, op.types[0].shape) if n != 1])
    return tuple(next(kept) if n != 1 else None for n in shape)


def _broadcast_strides(graph: Graph, op: Op) -> tuple[int, ...]:
    x = graph.types[op.inputs[0]]
    own = contiguous_strides(x.shape)
    strides = [0] * len(op.attrs["shape"])
    for i, d in enumerate(op.attrs["broadcast_dimensions"]):
        strides[d] = own[i] if x.shape[i] != 1 else 0
    return tuple(strides)


def _stride_vectors(spec: KernelSpec) -> list[tuple[int, ...]]:
    found = [n[3] for n in spec.nodes if n[0] == "load"] + [n[2] for n in spec.nodes
                                                             if n[0] == "iota"]
    found += [s[2] for s in spec.stores]
    if spec.reduce:
        found.append(spec.reduce[3])
    return found


def coalesce(spec: KernelSpec) -> KernelSpec:
    """Drop unit dims and merge adjacent dims every access walks contiguously."""
    if any(n == 0 for n in spec.domain):
        return spec
    keep = [d for d, n in enumerate(spec.domain) if n != 1]
    dims = [[d] for d in keep]
    vectors = _stride_vectors(spec)
    merged: list[list[int]] = []
    for group in dims:
        if merged:
            last, d = merged[-1][-1], group[0]
            if all(v[last] == v[d] * spec.domain[d] for v in vectors):
                merged[-1].append(d)
                continue
        merged.append(group)
    domain = tuple(int(np.prod([spec.domain[d] for d in g])) for g in merged)

    def remap(strides: tuple[int, ...]) -> tuple[int, ...]:
        return tuple(strides[g[-1]] for g in merged)

    nodes = []
    for n in spec.nodes:
        if n[0] == "load":
            n = (*n[:3], remap(n[3]))
        elif n[0] == "iota":
            n = (n[0], n[1], remap(n[2]))
        nodes.append(n)
    stores = tuple((node, arg, remap(s)) for node, arg, s in spec.stores)
    reduce = spec.reduce and (*spec.reduce[:3], remap(spec.reduce[3]))
    return KernelSpec(domain, spec.arg_dtypes, spec.n_in, tuple(nodes), stores, reduce)
