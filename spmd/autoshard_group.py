"""Coarsening for the auto-sharding search: fewer nodes, fewer strategies, same optimum.

- Chains of pointwise ops (every operand dim maps straight to the same result dim, or the
  operand is a scalar: add, exp, select, broadcast of a scalar...) of one shape become one
  node with one layout: a reshard inside such a chain never beats one at its ends, and the
  edges inside it (most of a transformer's) leave the integer program.
- Strategies of one op that want and give the same layouts keep only the cheapest: they
  differ in nothing the rest of the program sees (dominated on compute and memory alike).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from spmd.ir.graph import Graph, Op
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY, Trait

Dims = tuple[tuple[str, ...], ...]


def own_layout(op: Op) -> bool:
    """The partitioner lays its results out itself (from attributes or users: constant, iota,
    shard_map), so the search neither prices a factor rule for it nor pins it."""
    return REGISTRY[op.name].has(Trait.OWN_LAYOUT)


def pointwise(op: Op, types: dict[int, TensorType]) -> bool:
    """One result, nothing reduced or blocked, every operand's factors the result's or none."""
    if op.name not in REGISTRY or own_layout(op) or len(op.outputs) != 1:
        return False
    f = REGISTRY[op.name].factors(*[types[v] for v in op.inputs], **op.attrs)
    if f is None or f.reduce or f.blocked or len(f.results) != 1:
        return False
    res = f.results[0]
    if None in res or len(set(res)) != len(res):
        return False
    return all(fd == res or len(fd) == 0 for fd in f.operands)


def groups(graph: Graph) -> list[list[Op]]:
    """Ops in graph order, pointwise chains of one result shape joined (union-find)."""
    types = graph.types
    parent: dict[int, int] = {}  # op index -> parent op index

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    made_by: dict[int, int] = {}
    for i, op in enumerate(graph.ops):
        for v in op.outputs:
            made_by[v] = i
        if not pointwise(op, types):
            continue
        parent[i] = i
        shape = op.types[0].shape
        for v in op.inputs:
            j = made_by.get(v)
            if j is not None and j in parent and graph.ops[j].types[0].shape == shape:
                parent[find(j)] = find(i)
    members: dict[int, list[Op]] = {}
    order: list[int] = []
    for i, op in enumerate(graph.ops):
        root = find(i) if i in parent else -1 - i
        if root not in members:
            members[root] = []
            order.append(root)
        members[root].append(op)
    return [members[r] for r in order]


def group_inputs(ops: list[Op]) -> tuple[int, ...]:
    """Values the group reads that none of its ops make, in order of first use."""
    made = {v for op in ops for v in op.outputs}
    seen: list[int] = []
    for op in ops:
        seen += [v for v in op.inputs if v not in made and v not in seen]
    return tuple(seen)


def group_strategies(
    ops: list[Op],
    types: dict[int, TensorType],
    names: tuple[str, ...],
    sizes: tuple[int, ...],
    rates: dict[str, float],
    layouts: Callable[..., list[Dims]],
    make: Callable[..., object],
    escapes: set[int],
) -> list:
    """One strategy per even layout of the group's shape; a scalar operand stays replicated.
    Priced as the simulator's fusion: one pass over what the group reads from outside and
    what it gives outside (`escapes`), not a pass per op."""
    shape = ops[0].types[0].shape
    inputs = group_inputs(ops)
    axis_size = dict(zip(names, sizes))
    touched = sum(types[v].nbytes for v in inputs) + sum(
        types[v].nbytes for op in ops for v in op.outputs if v in escapes
    )
    out_bytes = sum(t.nbytes for op in ops for t in op.types)
    found = []
    for d in layouts(shape, names, sizes):
        shards = math.prod(axis_size[a] for axes in d for a in axes)
        wants = tuple(d if types[v].shape == shape else ((),) * types[v].ndim for v in inputs)
        gives = tuple((d, ()) for op in ops for _ in op.outputs)
        label = "P(" + ", ".join("+".join(a) if a else "None" for a in d) + ")"
        found.append(make(wants, gives, touched / shards / rates["hbm"], out_bytes / shards, label))
    return found


def undominated(strategies: list) -> list:
    """Per (wants, gives) the cheapest strategy, in first-seen order."""
    best: dict[tuple, object] = {}
    for s in strategies:
        key = (s.wants, s.gives)
        if key not in best or (s.cost_s, s.memory) < (best[key].cost_s, best[key].memory):
            best[key] = s
    return list(best.values())
