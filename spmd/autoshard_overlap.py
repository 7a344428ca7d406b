"""Argument gathers hidden behind compute, as the simulator's schedule hides them.

The simulator's list schedule (backends/tpu_sim/simulate.py) starts a collective on the ICI
stream as soon as its inputs exist; an argument exists at time 0, so its gathers (FSDP's
weight gathers) run, one after another in program order, while the compute stream runs the
ops before their first reader. The integer program adds every edge to the step time; here
it takes back what that schedule hides: per argument a continuous h_v (microseconds) with

    h_v <= the gathers charged on v's edges (the columns that pay them),
    sum of h_u over arguments first read at or before node k <= contractions before k
    (each at its fastest strategy),

the second a row per node that first reads an argument: the ICI stream, busy from time 0,
can hide no more gathering than the compute that runs before the reader needs it (only
contractions count: see counts_as_compute). On the CPU 2x4 GPT step this is what FSDP needed (its
gathers are hidden; summed, they made DP look 4% cheaper than it simulates). Both
are linear, so the step is priced as compute + edges - hidden, max(0, t_coll - t_hideable)
per prefix. Only gathers are taken back: an all-to-all or a slice of an argument still pays
(a slice runs on the compute stream; an all-to-all of tokens is where the program waits).
"""

from __future__ import annotations

from typing import Any

from spmd.autoshard_cost import is_contraction

US = 1e6  # as spmd/autoshard_ilp.py: h_v and its rows in microseconds


def counts_as_compute(node: Any) -> bool:
    """What a budget counts: contractions (an op whose attributes spell dot dims) and scans
    of them, priced by FLOPs as the simulator does; the rest is priced unfused (an upper
    bound: the simulator fuses a broadcast or a chain into its reader), and a budget must
    not promise more hiding than the schedule gives."""
    if node.op is None:
        return False
    if node.body is not None:  # a scan, its body solved once
        return True
    return is_contraction(node.op)


def hide_argument_gathers(
    nodes: list[Any],
    offset: list[int],
    charged: dict[int, list[tuple[int, float]]],
    cost: list[float],
    rows: list[tuple[list[int], list[float], float, float]],
    n: int,
    upper: dict[int, float],
) -> int:
    """Add h_v per argument value v with gathers charged (column, seconds), its rows, and
    its objective term -h_v; `upper` receives each h_v's bound. Returns the variable count."""
    first: dict[int, int] = {}
    for k, node in enumerate(nodes):
        for v in node.inputs:
            first.setdefault(v, k)
    readers: dict[int, list[int]] = {}
    for v, terms in charged.items():
        if not terms or v not in first:
            continue
        cols = [c for c, _ in terms]
        coefs = [-t * US for _, t in terms]
        rows.append(([n, *cols], [1.0, *coefs], -float("inf"), 0.0))
        cost.append(-1.0 / US)
        upper[n] = sum(t for _, t in terms) * US
        readers.setdefault(first[v], []).append(n)
        n += 1
    # the budget is a constant: each contraction before the reader at its fastest strategy,
    # a lower bound, as a budget must be (tied to the chosen strategies' columns instead,
    # HiGHS took as long and chose the same plans)
    hidden: list[int] = []
    budget, done = 0.0, 0
    for k in sorted(readers):
        hidden += readers[k]
        for node in nodes[done:k]:
            if counts_as_compute(node):
                budget += min(s.cost_s for s in node.strategies)
        rows.append((list(hidden), [1.0] * len(hidden), -float("inf"), budget * US))
        done = k
    return n
