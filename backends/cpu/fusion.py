"""Loop fusion: groups elementwise ops, broadcasts, converts, iota and a trailing reduce into
kernels (producer into consumer, no duplication); a value used outside its group is stored.

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


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def group_ops(graph: Graph) -> list[_Group]:
    """Reverse walk: an op joins its users' group when all of them are in one group."""
    users: dict[int, list[int]] = {}
    for i, op in enumerate(graph.ops):
        for v in op.inputs:
            users.setdefault(v, []).append(i)
    results = set(graph.results)
    group_of: dict[int, _Group] = {}
    groups: list[_Group] = []
    for i in reversed(range(len(graph.ops))):
        op = graph.ops[i]
        if not fusible(op, graph) or len(op.outputs) != 1:
            continue
        out = op.outputs[0]
        owners = {id(group_of.get(j)) for j in users.get(out, [])}
        owner = group_of.get(users[out][0]) if users.get(out) else None
        joins = (op.name != "reduce" and owner is not None and len(owners) == 1
                 and owner.domain == op.types[0].shape)
        if joins:
            owner.members.add(i)
            group_of[i] = owner
            if out in results:
                owner.extra.append(out)
            continue
        domain = graph.types[op.inputs[0]].shape if op.name == "reduce" else op.types[0].shape
        group = _Group(i, domain, {i})
        group_of[i] = group
        groups.append(group)
    return sorted(groups, key=lambda g: g.root)


def build_kernel(graph: Graph, group: _Group) -> Kernel:
    """Turn a group into a KernelSpec: nodes in program order, loads and stores with strides."""
    domain = group.domain
    flat = contiguous_strides(domain)
    nodes: list[Node] = []
    node_of: dict[int, int] = {}
    loads: dict[tuple[int, tuple[int, ...]], int] = {}
    inputs: list[int] = []

    def add(node: Node) -> int:
        nodes.append(node)
        return len(nodes) - 1

    def load(vid: int, strides: tuple[int, ...]) -> int:
        if vid in node_of:
            return node_of[vid]
        producer = graph.producers.get(vid)
        if producer is not None and is_scalar_constant(producer):
            value = np.asarray(producer.attrs["value"]).item()
            return add(("const", producer.types[0].dtype, value))
        if (vid, strides) not in loads:
            if vid not in inputs:
                inputs.append(vid)
            loads[vid, strides] = add(("load", graph.types[vid].dtype, inputs.index(vid), strides))
        return loads[vid, strides]

    ops = [graph.ops[i] for i in sorted(group.members)]
    reduce = None
    for op in ops:
        t = op.types[0]
        if op.name == "broadcast_in_dim":
            node_of[op.outputs[0]] = load(op.inputs[0], _broadcast_strides(graph, op))
        elif op.name == "iota":
            strides = tuple(int(d == op.attrs["dimension"]) for d in range(len(domain)))
            node_of[op.outputs[0]] = add(("iota", t.dtype, strides))
        elif op.name == "reduce":
            axes = set(op.attrs["axes"])
            kept = iter(contiguous_strides(t.shape))
            strides = tuple(0 if d in axes else next(kept) for d in range(len(domain)))
            reduce = (op.attrs["kind"], load(op.inputs[0], flat), strides)
        else:
            args = tuple(load(v, flat) for v in op.inputs)
            attrs = tuple(sorted((k, v) for k, v in op.attrs.items() if k != "weak"))
            node_of[op.outputs[0]] = add(("op", t.dtype, op.name, attrs, args))
    root = graph.ops[group.root]
    stored = [] if reduce else [root.outputs[0]]
    stored += [v for v in group.extra if v not in stored]
    n_in = len(inputs)
    stores = tuple((node_of[v], n_in + k, flat) for k, v in enumerate(stored))
    outputs = stored + ([root.outputs[0]] if reduce else [])
    reduce_spec = (reduce[0], reduce[1], n_in + len(stored), reduce[2]) if reduce else None
    arg_dtypes = tuple(graph.types[v].dtype for v in inputs + outputs)
    spec = coalesce(KernelSpec(domain, arg_dtypes, n_in, tuple(nodes), stores, reduce_spec))
    return Kernel(spec, ops, inputs, outputs, group.root, root if reduce else None,
                  name=f"k{group.root}_{root.name}")


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
