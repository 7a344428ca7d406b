"""Inline rematerialised regions. After it: no `remat` op and no `checkpoint_name` but those
that move an offloaded residual between memories (a `memory` attribute), anywhere.

Forward regions (recompute=False) are inlined first and CSE merges them with any copy of the
same forward (a region replayed for its residuals); backward regions (recompute=True) are
inlined after that CSE, so their recomputation stays a separate computation that runs in the
backward pass (as JAX's remat with prevent_cse): the forward's values it recomputes need not
stay live until then.
"""

from __future__ import annotations

from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.passes.cse import cse
from spmd.passes.rules import map_subgraphs, rename_inputs


def inline_remat(graph: Graph) -> Graph:
    """Inline every remat region (forward ones, CSE, then recompute ones)."""
    if not any(op.name in ("remat", "checkpoint_name") for op in graph.walk()):
        return graph
    graph = _inline(graph, recompute=False)
    return _inline(cse(graph), recompute=True)


def _inline(graph: Graph, recompute: bool) -> Graph:
    renamed: dict[int, int] = {}
    ops: list[Op] = []
    for op in graph.ops:
        op = rename_inputs(op, renamed)
        if op.name == "checkpoint_name" and not op.attrs.get("memory"):
            renamed[op.outputs[0]] = op.inputs[0]
            continue
        if op.name != "remat":
            ops.append(map_subgraphs(op, inline_remat))
            continue
        body = inline_remat(op.attrs["body"])
        if bool(op.attrs["recompute"]) != recompute:
            ops.append(
                Op(
                    op.name,
                    op.inputs,
                    op.outputs,
                    op.types,
                    Attrs({**op.attrs, "body": body}),
                    op.loc,
                )
            )
            continue
        local = dict(zip(body.params, op.inputs))
        for inner in body.ops:
            inner = rename_inputs(inner, local)
            outs = tuple(fresh_id() for _ in inner.outputs)
            local.update(zip(inner.outputs, outs))
            ops.append(
                Op(inner.name, inner.inputs, outs, inner.types, inner.attrs, inner.loc or op.loc)
            )
        for v, r in zip(op.outputs, body.results):
            renamed[v] = local.get(r, r)
    results = tuple(renamed.get(v, v) for v in graph.results)
    return graph.replace(ops=tuple(ops), results=results)
