"""Sharding propagation over the registry's factor rules, forward and backward.

User shardings (params, results, sharding_constraint) are seeds and never change. An op
with a known operand or result passes the known factors' mesh axes to its unknown
values; when two values disagree on a factor, the one costlier to reshard wins (the
bigger, less the product's bytes for an operand split on a contracted dim, whose
product then needs summing). Values nothing reaches have no preference.
"""

from __future__ import annotations

from typing import Any

from partitioner.spec import AxisTuple, MeshShape
from spmd.ir.graph import Graph, Op
from spmd.ops import REGISTRY, Factors, Trait

Dims = tuple[AxisTuple, ...]


def op_factors(op: Op, types: dict[int, Any]) -> Factors | None:
    opdef = REGISTRY[op.name]
    if opdef.has(Trait.OWN_LAYOUT):
        return None
    return opdef.factors(*(types[v] for v in op.inputs), **op.attrs)


def factor_axes(
    op: Op,
    f: Factors,
    known: dict[int, Dims],
    types: dict[int, Any],
    include_results: bool = True,
    first: int | None = None,
) -> dict[str, AxisTuple]:
    """Mesh axes of each factor, from the op's known values (the costlier to move first).

    A mesh axis may shard two factors that never share a value (a scan's carry and its
    stacked weights); within one value it shards one dim at most. `first`: that value's
    layout claims before the others'."""
    values = list(zip(op.inputs, f.operands))
    if include_results:
        values += list(zip(op.outputs, f.results))
    values = [(v, fd) for v, fd in values if v in known]
    result_bytes = sum(types[v].nbytes for v in op.outputs)
    values.sort(
        key=lambda p: (
            p[0] != first,
            -_claim_bytes(p[0], p[1], known[p[0]], op, f, types, result_bytes),
        )
    )
    near = _neighbours(f)
    out: dict[str, AxisTuple] = {}
    for vid, fdims in values:
        for factor, axes, n in zip(fdims, known[vid], types[vid].shape):
            if factor is None or not axes or factor in out or factor in f.blocked or n == 1:
                continue
            if any(set(out[g]) & set(axes) for g in near.get(factor, ()) if g in out):
                continue
            out[factor] = axes
    return out


def _claim_bytes(
    vid: int, fdims: Any, dims: Dims, op: Op, f: Factors, types: dict[int, Any], result: int
) -> int:
    """What a value's layout is worth keeping: the bytes resharding it would move. An
    operand sharded on a contracted factor also leaves the result a pending sum, which
    resolving moves about the result's bytes: a weight sharded on its input dim loses to
    an activation whose batch sharding keeps the (bigger) product sharded."""
    own = types[vid].nbytes
    if vid in op.outputs:
        return own
    contracted = any(
        factor in f.reduce and axes and n > 1
        for factor, axes, n in zip(fdims, dims, types[vid].shape)
    )
    return own - result if contracted else own


def _neighbours(f: Factors) -> dict[str, set[str]]:
    """Per factor, the factors that share a value with it."""
    near: dict[str, set[str]] = {}
    for fdims in f.operands + f.results:
        names = {x for x in fdims if x is not None}
        for x in names:
            near.setdefault(x, set()).update(names - {x})
    return near


def dims_from_factors(
    fdims: tuple[str | None, ...], fa: dict[str, AxisTuple], shape: tuple[int, ...]
) -> Dims:
    out: list[AxisTuple] = []
    used: set[str] = set()
    for factor, n in zip(fdims, shape):
        axes = fa.get(factor, ()) if factor is not None else ()
        if used & set(axes) or n == 1:
            axes = ()
        used |= set(axes)
        out.append(axes)
    return tuple(out)


def propagate(graph: Graph, mesh: MeshShape, seeds: dict[int, Dims]) -> dict[int, Dims]:
    """Dims for the values propagation reached (the others: no preference)."""
    known: dict[int, Dims] = dict(seeds)
    fixed = set(seeds)
    types = graph.types
    factors = {id(op): op_factors(op, types) for op in graph.ops}
    for op in graph.ops:
        if "sharding" in op.attrs and REGISTRY[op.name].has(Trait.ANNOTATION):
            dims = op.attrs["sharding"].dims
            known[op.outputs[0]] = dims
            fixed.add(op.outputs[0])
            # the constrained value's producer is asked for that layout too (XLA's
            # annotation is on the value itself): it weighs making it so against resharding
            src = op.inputs[0]
            if src not in fixed:
                known[src] = dims
                fixed.add(src)
    for _ in range(4):
        changed = False
        for order in (graph.ops, tuple(reversed(graph.ops))):
            for op in order:
                f = factors[id(op)]
                if f is None:
                    continue
                touched = [v for v in op.inputs + op.outputs if v in known]
                if not touched:
                    continue
                fa = factor_axes(op, f, known, types)
                for vid, fdims in zip(op.inputs + op.outputs, f.operands + f.results):
                    if vid in fixed:
                        continue
                    dims = dims_from_factors(fdims, fa, types[vid].shape)
                    if known.get(vid) != dims and (vid not in known or _better(dims, known[vid])):
                        known[vid] = dims
                        changed = True
        if not changed:
            break
    return known


def _better(new: Dims, old: Dims) -> bool:
    """Only refine a propagated value by sharding more dims, never by un-sharding."""
    return sum(len(d) for d in new) > sum(len(d) for d in old)
