"""Algebraic identities. After it: no x*1, 1*x, x/1, x+0, 0+x, x-0, neg(neg(x)), transpose of
transpose, no-op reshape/convert/broadcast, select with a constant or repeated choice, or a
transpose that only swaps the two sides of its single-use dot_general (autodiff's weight
gradients): that dot computes the swapped product directly.

A rule fires only when the value it forwards has exactly the op's type (weak bit included).
"""

from __future__ import annotations

from spmd.ir.graph import Attrs, Graph, Op
from spmd.passes.rules import GraphView, RuleTable

rules = RuleTable()


@rules.on("mul")
def mul_by_one(op: Op, view: GraphView) -> int | None:
    """x * 1 -> x,  1 * x -> x"""
    x, y = op.inputs
    if view.is_constant(y, 1):
        return x
    return y if view.is_constant(x, 1) else None


@rules.on("div")
def div_by_one(op: Op, view: GraphView) -> int | None:
    """x / 1 -> x"""
    return op.inputs[0] if view.is_constant(op.inputs[1], 1) else None


@rules.on("add")
def add_zero(op: Op, view: GraphView) -> int | None:
    """x + 0 -> x,  0 + x -> x  (for floats -0.0 + 0 is +0.0; like XLA, the sign of a zero
    is not kept)"""
    x, y = op.inputs
    if view.is_constant(y, 0):
        return x
    return y if view.is_constant(x, 0) else None


@rules.on("sub")
def sub_zero(op: Op, view: GraphView) -> int | None:
    """x - 0 -> x"""
    return op.inputs[0] if view.is_constant(op.inputs[1], 0) else None


@rules.on("neg")
def neg_neg(op: Op, view: GraphView) -> int | None:
    """neg(neg(x)) -> x"""
    inner = view.producer(op.inputs[0])
    return inner.inputs[0] if inner is not None and inner.name == "neg" else None


@rules.on("transpose")
def transpose_transpose(op: Op, view: GraphView) -> int | Op | None:
    """transpose(x, identity) -> x;  transpose(transpose(x, p), q) -> transpose(x, p[q])"""
    permutation = tuple(op.attrs["permutation"])
    if permutation == tuple(range(len(permutation))):
        return op.inputs[0]
    inner = view.producer(op.inputs[0])
    if inner is None or inner.name != "transpose":
        return None
    composed = tuple(inner.attrs["permutation"][p] for p in permutation)
    if composed == tuple(range(len(composed))):
        return inner.inputs[0]
    return Op("transpose", inner.inputs, op.outputs, op.types, Attrs(permutation=composed), op.loc)


@rules.on("transpose")
def transpose_of_dot(op: Op, view: GraphView) -> Op | None:
    """transpose(dot_general(a, b), (batch, b's free, a's free)) -> dot_general(b, a)"""
    x = op.inputs[0]
    dot = view.producer(x)
    if dot is None or dot.name != "dot_general" or view.uses.get(x) != 1:
        return None
    (lc, rc), (lb, rb) = dot.attrs["dimension_numbers"]
    batch = len(lb)
    lhs_free = view.types[dot.inputs[0]].ndim - batch - len(lc)
    rhs_free = view.types[dot.inputs[1]].ndim - batch - len(rc)
    swapped = (
        *range(batch),
        *range(batch + lhs_free, batch + lhs_free + rhs_free),
        *range(batch, batch + lhs_free),
    )
    if tuple(op.attrs["permutation"]) != swapped:
        return None
    attrs = Attrs({**dot.attrs, "dimension_numbers": ((rc, lc), (rb, lb))})
    return Op("dot_general", dot.inputs[::-1], op.outputs, op.types, attrs, dot.loc)


@rules.on("reshape")
def reshape_noop(op: Op, view: GraphView) -> int | Op | None:
    """reshape(x, shape(x)) -> x;  reshape(reshape(x, s), t) -> reshape(x, t)"""
    x = op.inputs[0]
    if view.types[x].shape == op.types[0].shape:
        return x
    inner = view.producer(x)
    if inner is None or inner.name != "reshape":
        return None
    return Op("reshape", inner.inputs, op.outputs, op.types, op.attrs, op.loc)


@rules.on("convert_element_type")
def convert_noop(op: Op, view: GraphView) -> int | None:
    """convert(x, dtype(x)) -> x  (the weak bit must match too)"""
    return op.inputs[0]


@rules.on("broadcast_in_dim")
def broadcast_noop(op: Op, view: GraphView) -> int | None:
    """broadcast_in_dim(x, shape(x), (0, ..., n-1)) -> x"""
    x = op.inputs[0]
    dims = tuple(op.attrs["broadcast_dimensions"])
    same = view.types[x].shape == op.types[0].shape and dims == tuple(range(len(dims)))
    return x if same else None


@rules.on("select")
def select_known(op: Op, view: GraphView) -> int | None:
    """select(true, a, b) -> a;  select(false, a, b) -> b;  select(p, a, a) -> a"""
    pred, on_true, on_false = op.inputs
    if on_true == on_false or view.is_constant(pred, True):
        return on_true
    return on_false if view.is_constant(pred, False) else None


def simplify(graph: Graph) -> Graph:
    """Apply the algebraic identities above until none matches."""
    return rules.rewrite(graph)
