"""Dead code elimination. After it: every op's output is used or is a result."""

from __future__ import annotations

from spmd.ir.graph import Graph


def dce(graph: Graph) -> Graph:
    live = set(graph.results)
    kept = []
    for op in reversed(graph.ops):
        if any(v in live for v in op.outputs):
            kept.append(op)
            live.update(op.inputs)
    return graph.replace(ops=tuple(reversed(kept)))
