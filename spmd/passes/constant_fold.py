"""Constant folding. After it: no foldable op whose inputs are all constants (or broadcasts
of constants) and whose outputs have at most FOLD_LIMIT elements; folded values are
constant ops at the old op's loc (a splat as a scalar constant and a broadcast).
"""

from __future__ import annotations

import numpy as np

from spmd import dtypes
from spmd.interpreter import run_reference
from spmd.ir.graph import Attrs, Graph, Op, fresh_id, subgraphs
from spmd.ir.opdef import REGISTRY, Trait
from spmd.ir.types import TensorType
from spmd.passes.purity import is_foldable
from spmd.passes.rules import GraphView, map_subgraphs

FOLD_LIMIT = 1024
SMALLEST = Trait.SOURCE | Trait.BROADCAST  # already as small as they get


def constant_fold(graph: Graph) -> Graph:
    """Evaluate small all-constant ops with the reference interpreter."""
    view = GraphView(graph)
    ops: list[Op] = []
    for op in graph.ops:
        op = map_subgraphs(op, constant_fold)
        small = all(t.size <= FOLD_LIMIT for t in op.types)
        values = [view.constant_value(v) for v in op.inputs] if small else [None]
        if _can_fold(op, values):
            try:
                outs = run_reference(op, [np.asarray(v) for v in values])
            except Exception:  # noqa: BLE001  (an op that cannot run now is left to run later)
                outs = None
            if outs is not None:
                for vid, t, value in zip(op.outputs, op.types, outs):
                    _emit_constant(ops, view, vid, t, value, op.loc)
                continue
        ops.append(op)
        view.add(op)
    return graph.replace(ops=tuple(ops))


def _can_fold(op: Op, values: list[np.ndarray | None]) -> bool:
    if (
        REGISTRY[op.name].has(SMALLEST)
        or not is_foldable(op.name)
        or subgraphs(op)
        or not op.outputs
    ):
        return False
    if any(v is None for v in values):
        return False
    return all(t.size <= FOLD_LIMIT for t in op.types)


def _emit_constant(
    ops: list[Op], view: GraphView, vid: int, t: TensorType, value: np.ndarray, loc: str
) -> None:
    """Define `vid` as `value`: one constant, or a scalar constant broadcast when a splat."""
    value = np.asarray(value, dtype=dtypes.to_numpy(t.dtype))
    raw = np.frombuffer(value.tobytes(), np.uint8).reshape(value.size, -1)
    if value.size > 1 and bool((raw == raw[:1]).all()):
        scalar = fresh_id()
        scalar_type = TensorType((), t.dtype, t.weak)
        scalar_op = Op(
            "constant",
            (),
            (scalar,),
            (scalar_type,),
            Attrs(value=value.reshape(-1)[0].copy().reshape(()), weak=t.weak),
            loc,
        )
        ops.append(scalar_op)
        view.add(scalar_op)
        op = Op(
            "broadcast_in_dim",
            (scalar,),
            (vid,),
            (t,),
            Attrs(shape=t.shape, broadcast_dimensions=()),
            loc,
        )
    else:
        op = Op("constant", (), (vid,), (t,), Attrs(value=value, weak=t.weak), loc)
    ops.append(op)
    view.add(op)
