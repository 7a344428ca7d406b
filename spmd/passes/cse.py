"""Common subexpression elimination. After it: no two pure ops with the same name,
inputs, attrs and types (in one graph); impure ops (rng, effects) are never merged.
"""

from __future__ import annotations

from typing import Any

from spmd.ir.graph import Graph, Op
from spmd.passes.purity import is_impure
from spmd.passes.rules import map_subgraphs, rename_inputs


def cse(graph: Graph) -> Graph:
    """Replace each repeated pure op by the first one computing the same thing."""
    renamed: dict[int, int] = {}
    seen: dict[Any, Op] = {}
    ops: list[Op] = []
    for op in graph.ops:
        op = map_subgraphs(rename_inputs(op, renamed), cse)
        if is_impure(op.name) or not op.outputs:
            ops.append(op)
            continue
        key = (op.name, op.inputs, op.types, op.attrs)
        first = seen.get(key)
        if first is None:
            seen[key] = op
            ops.append(op)
            continue
        renamed.update(zip(op.outputs, first.outputs))
    results = tuple(renamed.get(v, v) for v in graph.results)
    return graph.replace(ops=tuple(ops), results=results)
