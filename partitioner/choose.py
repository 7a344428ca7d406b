"""How an op's factors map to mesh axes: the cheapest of several candidate plans, by the
bytes their collectives move (operands resharded in, result resharded or summed out).

Candidates: factors as propagation wants the result; factors as the operands already are;
and for a contraction over a sharded factor, each of those with the contracted dims
gathered in the operands instead of the result left as a pending sum ("gather the operand"
against "reduce the result"). The choice and the rejected plans' costs are kept as a note
that the collective report repeats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from partitioner.cost import reshard_moved
from partitioner.propagate import dims_from_factors, factor_axes, op_factors
from partitioner.spec import AxisTuple, ShardSpec
from spmd.ir.graph import Op
from spmd.ops import REGISTRY, Factors, Linearity, Trait

if TYPE_CHECKING:
    from partitioner.partition import Partitioner

FactorAxes = dict[str, AxisTuple]
LOOKAHEAD = 8  # linear ops a pending sum is followed through when pricing its resolution


def choose_factor_axes(p: Partitioner, op: Op, f: Factors) -> tuple[FactorAxes, str]:
    """The cheapest candidate and a note naming the rejected ones with their costs."""
    candidates: list[tuple[str, FactorAxes]] = [
        ("as the result wants", factor_axes_from(p, op, f, results_first=True)),
        ("as the operands are", factor_axes_from(p, op, f, results_first=False)),
    ]
    if f.reduce and not f.even_split:
        # a contraction whose operands disagree: each operand's layout taken as it is (the
        # smaller one's too: keeping it may spare gathering it, as a cotangent sharded on
        # the batch against an expert weight sharded on the experts)
        current = {v: p.env[v][1].dims for v in op.inputs}
        for i, v in enumerate(op.inputs):
            if any(current[v]) and op.inputs.index(v) == i:
                fa = factor_axes(op, f, current, p.types, include_results=False, first=v)
                candidates.append((f"as operand {i} is", fa))
    for what, fa in list(candidates):
        if one_sided_contraction(p, op, f, fa):
            candidates.append((f"{what}, contracted dims gathered", gathered(p, op, f, fa)))
    unique: list[tuple[str, FactorAxes]] = []
    for what, fa in candidates:
        if all(fa != other for _, other in unique):
            unique.append((what, fa))
    if len(unique) == 1:
        return unique[0][1], ""
    costs = [plan_cost(p, op, f, fa) for _, fa in unique]
    best = min(range(len(unique)), key=lambda i: (costs[i], i))
    words = [_describe(fa, f) for _, fa in unique]
    words = [  # two plans of one kind (gathering different operands): name their factors
        w if words.count(w) == 1 else f"{w} {_describe(fa, Factors((), ()))}"
        for w, (_, fa) in zip(words, unique)
    ]
    rejected = "; ".join(
        f"{words[i]} {costs[i]:.0f} B"
        for i in range(len(unique))
        if i != best and costs[i] > costs[best]
    )
    note = f"chose {words[best]} {costs[best]:.0f} B moved over {rejected}" if rejected else ""
    return unique[best][1], note


def one_sided_contraction(p: Partitioner, op: Op, f: Factors, fa: FactorAxes) -> bool:
    """A contracted factor sharded in fa that some operand does not hold sharded yet: only
    then is gathering an alternative. Where every operand already splits the contraction
    (data-parallel weight gradients), gathering would repeat the whole contraction on each
    device of the axes; the pending sum is the plan there (XLA's too)."""
    for factor in f.reduce:
        if factor not in fa:
            continue
        for v, fdims in zip(op.inputs, f.operands):
            dims = p.env[v][1].dims
            held = {axes for fd, axes in zip(fdims, dims) if fd == factor}
            if factor in fdims and fa[factor] not in held:
                return True
    return False


def _describe(fa: FactorAxes, f: Factors) -> str:
    summed = [factor for factor in f.reduce if factor in fa]
    return (
        "reduce the result"
        if summed
        else "gather the operands"
        if f.reduce
        else ("{" + ", ".join(f"{k}:{','.join(v)}" for k, v in sorted(fa.items())) + "}")
    )


def gathered(p: Partitioner, op: Op, f: Factors, fa: FactorAxes) -> FactorAxes:
    """fa without its contracted factors; the axes they free go to result factors that
    propagation wants sharded on them."""
    out = {k: v for k, v in fa.items() if k not in f.reduce}
    used = {a for v in out.values() for a in v}
    for v, fdims in zip(op.outputs, f.results):
        for factor, axes, n in zip(fdims, p.dims_of.get(v, ()), p.types[v].shape):
            if factor is None or factor in out or not axes or used & set(axes) or n == 1:
                continue
            out[factor] = axes
            used |= set(axes)
    return out


def generic_cost(p: Partitioner, op: Op) -> float:
    """Bytes moved by the plan the factor rule would choose for op: what a hand-written
    plan (permutes, local lookups, realigned windows) must beat to be taken instead."""
    f = op_factors(op, p.types)
    fa, _ = choose_factor_axes(p, op, f)
    return plan_cost(p, op, f, fa)


def plan_cost(p: Partitioner, op: Op, f: Factors, fa: FactorAxes) -> float:
    """Bytes moved to bring the operands into fa's layout plus to resolve or reshard the
    result into the layout propagation wants for it."""
    cost = 0.0
    for v, fdims in zip(op.inputs, f.operands):
        cost += operand_moved(p, v, dims_from_factors(fdims, fa, p.types[v].shape))
    partial = reduced_axes(p, f, fa)
    for v, fdims in zip(op.outputs, f.results):
        spec = ShardSpec(dims_from_factors(fdims, fa, p.types[v].shape), partial, f.reduce_kind)
        if partial:
            cost += pending_sum_moved(p, v, spec)
        elif v in p.dims_of:
            cost += reshard_moved(p.mesh, p.types[v], spec, p.dims_of[v])
    return cost


def operand_moved(p: Partitioner, v: int, want: tuple[AxisTuple, ...]) -> float:
    """As Partitioner.operand does it: a broadcast is re-emitted in the wanted layout."""
    spec = p.env[v][1]
    producer = p.graph.producers.get(v)
    if spec.dims != want and producer is not None and REGISTRY[producer.name].has(Trait.BROADCAST):
        bf = REGISTRY[producer.name].factors(p.types[producer.inputs[0]], **producer.attrs)
        fa = {factor: axes for factor, axes in zip(bf.results[0], want) if factor and axes}
        src = producer.inputs[0]
        return reshard_moved(
            p.mesh,
            p.types[src],
            p.env[src][1],
            dims_from_factors(bf.operands[0], fa, p.types[src].shape),
        )
    return reshard_moved(p.mesh, p.types[v], spec, want)


def pending_sum_moved(p: Partitioner, v: int, spec: ShardSpec) -> float:
    """What resolving a pending sum at v costs: the cheapest point along the chain of
    single-use linear ops that keep it pending (a sum of a partial product resolves as a
    scalar), each priced into the layout propagation wants there."""
    users = p.users_of
    best = reshard_moved(p.mesh, p.types[v], spec, p.dims_of.get(v, spec.dims))
    pending = set(spec.partial)
    for _ in range(LOOKAHEAD):
        consumers = users.get(v, [])
        if len(consumers) != 1:
            break
        op = consumers[0]
        linear = REGISTRY[op.name].linear
        if linear is Linearity.NONE or len(op.outputs) != 1:
            break
        if linear is Linearity.SAME_REDUCTION and op.attrs.get("kind") != spec.partial_kind:
            break
        out = op.outputs[0]
        if p.types[out].size > p.types[v].size or p.types[out].dtype != p.types[v].dtype:
            break
        dims = p.dims_of.get(out, ((),) * p.types[out].ndim)
        if pending & {a for d in dims for a in d}:
            break
        v = out
        here = ShardSpec(dims, spec.partial, spec.partial_kind)
        best = min(best, reshard_moved(p.mesh, p.types[v], here, dims))
    return best


def reduced_axes(p: Partitioner, f: Factors, fa: FactorAxes) -> tuple[str, ...]:
    axes = {a for factor in f.reduce if factor in fa for a in fa[factor]}
    return tuple(a for a in p.mesh.names if a in axes)


def factor_axes_from(p: Partitioner, op: Op, f: Factors, results_first: bool) -> FactorAxes:
    fa: FactorAxes = {}
    used: set[str] = set()
    result_factors = {x for fd in f.results for x in fd if x is not None}
    if results_first:
        for v, fdims in zip(op.outputs, f.results):
            preferred = p.dims_of.get(v, ((),) * len(fdims))
            for factor, axes, n in zip(fdims, preferred, p.types[v].shape):
                if factor is None or factor in f.blocked or n == 1:
                    continue
                if axes and factor not in fa and not used & set(axes):
                    fa[factor] = axes
                    used |= set(axes)
    current = {v: p.env[v][1].dims for v in op.inputs}
    for factor, axes in factor_axes(op, f, current, p.types, include_results=False).items():
        if factor in fa or used & set(axes) or (results_first and factor in result_factors):
            continue
        fa[factor] = axes
        used |= set(axes)
    if f.even_split:
        operand_factors = {x for x in f.operands[0] if x is not None}
        fa = even_only(p, op, f, {k: v for k, v in fa.items() if k in operand_factors})
    return fa


def even_only(p: Partitioner, op: Op, f: Factors, fa: FactorAxes) -> FactorAxes:
    """A factor stays sharded only where every dim it names splits evenly (reshape)."""
    keep = dict(fa)
    for v, fdims in zip(op.inputs + op.outputs, f.operands + f.results):
        for factor, n in zip(fdims, p.types[v].shape):
            if factor in keep and n % p.mesh.size(keep[factor]):
                del keep[factor]
    return keep
