"""Residuals of a scan's VJP: the part of one backward step that reads only primal values
(the replayed forward step) moves into the forward scan, which stacks the values the rest
needs; the backward step then reads them instead of recomputing the forward step.

Without this the backward body replays the whole forward step: a third more compute, and
under tensor parallelism one more all-reduce per step (the replayed row-parallel matmul).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from spmd.ir.graph import Graph, Op
from spmd.ops.opdef import is_impure

# Ops cheaper to redo in the backward step than to save per step (on values it has anyway):
# a transposed weight is recomputed there, not stacked once per step.
CHEAP = frozenset(
    {
        "transpose",
        "reshape",
        "broadcast_in_dim",
        "convert_element_type",
        "slice",
        "squeeze",
        "expand_dims",
        "rev",
        "constant",
        "iota",
    }
)


@dataclass(frozen=True)
class Split:
    """forward: body extended to also return the residuals (after its own results);
    backward: the step graph without the primal ops, the residuals as params right after
    the step's explicit params (before the captured ones)."""

    forward: Graph
    backward: Graph


def split_residuals(
    step: Graph, body: Graph, primal_params: Sequence[int], n_explicit: int
) -> Split | None:
    """Split a traced backward step whose params `primal_params` (ids of `step`) stand for
    body.params in order (ops reading captured values stay in the backward step). None
    when the step has no primal op worth saving."""
    rename = dict(zip(primal_params, body.params))
    available = set(primal_params)  # known on both sides: the backward recomputes these
    primal: set[int] = set()  # computed only by the forward, which saves what is needed
    copied: list[Op] = []
    primal_ops: list[Op] = []
    for op in step.ops:
        if is_impure(op.name):
            continue
        if all(v in available for v in op.inputs) and (not op.inputs or op.name in CHEAP):
            available.update(op.outputs)
            copied.append(op)
        elif all(v in available or v in primal for v in op.inputs):
            primal.update(op.outputs)
            primal_ops.append(op)
    if not primal_ops:
        return None
    moved = {id(op) for op in primal_ops}
    kept_ops = [op for op in step.ops if id(op) not in moved]
    needed = {v for op in kept_ops for v in op.inputs} | set(step.results)
    residuals = [v for op in primal_ops for v in op.outputs if v in needed]
    types = {
        **dict(zip(step.params, step.param_types)),
        **{v: t for op in step.ops for v, t in zip(op.outputs, op.types)},
    }
    # copied ops run on both sides (dce drops those the forward does not read)
    on_forward = moved | {id(op) for op in copied}
    forward_ops = [_renamed(op, rename) for op in step.ops if id(op) in on_forward]
    forward = body.replace(
        ops=body.ops + tuple(forward_ops), results=body.results + tuple(residuals)
    )
    backward = step.replace(
        params=step.params[:n_explicit] + tuple(residuals) + step.params[n_explicit:],
        param_types=(
            step.param_types[:n_explicit]
            + tuple(types[v] for v in residuals)
            + step.param_types[n_explicit:]
        ),
        ops=tuple(kept_ops),
    )
    return Split(forward, backward)


def _renamed(op: Op, rename: dict[int, int]) -> Op:
    inputs = tuple(rename.get(v, v) for v in op.inputs)
    return (
        op if inputs == op.inputs else Op(op.name, inputs, op.outputs, op.types, op.attrs, op.loc)
    )
