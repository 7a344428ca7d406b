"""A scan's body solved once: layers repeated by a scan cost one body's integer program, not
`length` copies of it (the issue's layer-repeating heuristic).

The body is planned on its own (its consts, carries and per-step x slices free), each carry's
input tied to the carry result the next step feeds back (the partitioner reshards that result
into the layout the carry came in with, every step). The scan node then has one strategy:
the body's layouts, the xs/ys with their scan dim unsharded (partitioner/control.py never
shards it), priced `length` times the body's objective. Its pins go inside the body.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from spmd.autoshard_cost import is_contraction
from spmd.ir.graph import Op

Dims = tuple[tuple[str, ...], ...]


def scan_node(
    op: Op,
    names: tuple[str, ...],
    sizes: tuple[int, ...],
    rates: dict[str, float],
    edge_time: Callable[..., float],
    build: Callable[..., list],
    solve: Callable,
    make: Callable[..., Any],
    memory_limit: float | None = None,
) -> tuple[Any, Any]:
    """(the scan's one Strategy, the body's Solution). Under memory_limit the body's solve
    counts its per-step slices `length` times (the stacked arrays live outside the body),
    its consts, carries and contraction results once."""
    a = op.attrs
    body, nc, ncar = a["body"], a["num_consts"], a["num_carry"]
    nodes = build(body, names, sizes, rates, {}, edge_time)
    for i in range(ncar):  # params come first in build's order
        node = nodes[nc + i]
        node.inputs = (body.results[i],)
        node.strategies = [dataclasses.replace(s, wants=(s.gives[0][0],)) for s in node.strategies]
    for node in nodes[nc + ncar : len(body.params)]:
        node.strategies = [
            dataclasses.replace(s, memory=s.memory * a["length"]) for s in node.strategies
        ]
    sol = solve(
        body,
        nodes,
        edge_time,
        memory_limit,
        lambda n: n.op is None or is_contraction(n.op),
        hide_gathers=False,
    )
    chosen = {
        v: s.gives[j]
        for node, k in zip(sol.nodes, sol.choice)
        for s in [node.strategies[k]]
        for j, v in enumerate(node.outputs)
    }
    fixed = nc + ncar
    wants = tuple(
        chosen[v][0] if k < fixed else ((),) + chosen[v][0] for k, v in enumerate(body.params)
    )
    gives = tuple((chosen[body.params[nc + i]][0], ()) for i in range(ncar)) + tuple(
        (((),) + chosen[v][0], ()) for v in body.results[ncar:]
    )
    label = f"body solved once, x{a['length']}"
    return make(wants, gives, a["length"] * sol.objective_s, 0.0, label), sol
