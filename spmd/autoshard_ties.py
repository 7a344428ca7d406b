"""Donated arguments tied to results: a training step returns its new weights in the layout it
takes the old ones in, or every step reshards them. As XLA's input/output aliasing (JAX's
donate_argnums): each result takes the first donated argument not yet taken with its shape and
dtype, and the integer program makes the two layout choices equal (XLA's auto-sharding makes
aliased values one strategy choice too). Imports nothing of the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Rows = list[tuple[list[int], list[float], float, float]]


def donated_ties(
    param_types: Sequence[Any], result_types: Sequence[Any], donated: Sequence[bool]
) -> dict[int, int]:
    """result index -> argument index: each result in order takes the earliest donated
    argument left with its shape and dtype (a donated argument no result matches is unused)."""
    free: dict[tuple, list[int]] = {}
    for i, (t, d) in enumerate(zip(param_types, donated)):
        if d:
            free.setdefault((tuple(t.shape), str(t.dtype)), []).append(i)
    ties = {}
    for j, t in enumerate(result_types):
        waiting = free.get((tuple(t.shape), str(t.dtype)))
        if waiting:
            ties[j] = waiting.pop(0)
    return ties


def tie_rows(
    ties: Sequence[tuple[int, int]],
    nodes: Sequence[Any],
    offset: Sequence[int],
    where: dict[int, tuple[int, int]],
    rows: Rows,
) -> list[tuple[int, int]]:
    """Per tie (result value -> argument value) and layout: the result's producer gives that
    layout exactly when the argument takes it (sum of one's strategy columns = the other's);
    a layout only one side can take is forbidden. A tie whose sides share no layout (an
    argument fixed to one its producer cannot give) is left out: returned, not added."""
    dropped = []
    for result, argument in ties:
        sides = [where[result], where[argument]]
        if sides[0] == sides[1]:  # the argument itself returned
            continue
        cols: dict[Any, tuple[list[int], list[float]]] = {}
        layouts = []
        for sign, (k, j) in zip((1.0, -1.0), sides):
            mine = set()
            for s, strategy in enumerate(nodes[k].strategies):
                dims = strategy.gives[j][0]
                mine.add(dims)
                entry = cols.setdefault(dims, ([], []))
                entry[0].append(offset[k] + s)
                entry[1].append(sign)
            layouts.append(mine)
        if not layouts[0] & layouts[1]:
            dropped.append((result, argument))
            continue
        rows += [(c, coefs, 0.0, 0.0) for c, coefs in cols.values()]
    return dropped
