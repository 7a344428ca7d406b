"""Dead code elimination. After it: every op's output is used or is a result; ops with
no outputs (run for their effects) stay. Sub-graphs are cleaned too.
"""

from __future__ import annotations

from spmd.ir.graph import Graph, subgraphs
from spmd.passes.rules import map_subgraphs


def dce(graph: Graph) -> Graph:
    """Drop ops whose outputs nothing reads."""
    live = set(graph.results)
    kept = []
    for op in reversed(graph.ops):
        if not op.outputs or any(v in live for v in op.outputs):
            op = map_subgraphs(op, dce) if subgraphs(op) else op
            kept.append(op)
            live.update(op.inputs)
    return graph.replace(ops=tuple(reversed(kept)))
