"""Peak live bytes of a per-device program (params, temporaries and results)."""

from __future__ import annotations

from spmd.ir.graph import Graph


def peak_bytes(program: Graph) -> int:
    """Liveness over program order: a value lives from its definition to its last use."""
    last_use: dict[int, int] = {}
    for i, op in enumerate(program.ops):
        for v in op.inputs:
            last_use[v] = i
    end = len(program.ops)
    for v in program.results:
        last_use[v] = end
    types = program.types
    live = sum(types[v].nbytes for v in program.params)
    peak = live
    for i, op in enumerate(program.ops):
        live += sum(t.nbytes for t in op.types)
        peak = max(peak, live)
        for v in set(op.inputs):
            if last_use.get(v) == i:
                live -= types[v].nbytes
        for v in op.outputs:
            if v not in last_use:
                live -= types[v].nbytes
    return peak
