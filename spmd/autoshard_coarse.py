"""Coarsening a mesh of three or more axes: the search runs on each 2-D view that groups the
axes into two runs (x.y | z and x | y.z on an x, y, z mesh), and the plan whose simulated step
is shortest is kept (the issue's coarsening heuristic).

On v5p 8x8x8 the full 3-axis program of a transformer block has 3195 strategies and 260k edge
variables; HiGHS stops at its time limit with a plan 21x the best hand plan. A 2-D view has
the block's v5e-sized program (some 20k variables), solved to optimality in seconds. What is
lost: layouts that give x and z to one dim without y, or split x, y, z over three dims.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

Dims = tuple[tuple[str, ...], ...]


def views(names: tuple[str, ...], sizes: tuple[int, ...]) -> list[tuple[tuple, tuple, dict]]:
    """(logical names, logical sizes, logical name -> physical axes) per split into two runs."""
    out = []
    for i in range(1, len(names)):
        runs = (names[:i], names[i:])
        size = dict(zip(names, sizes))
        logical = tuple(".".join(r) for r in runs)
        out.append(
            (logical, tuple(math.prod(size[a] for a in r) for r in runs), dict(zip(logical, runs)))
        )
    return out


def expand(dims: Dims, axes: dict[str, tuple[str, ...]]) -> Dims:
    return tuple(tuple(a for g in d for a in axes[g]) for d in dims)


def physical_edges(edge_time: Any, axes: dict[str, tuple[str, ...]]) -> Any:
    """The mesh's edge pricing, asked in physical axes about a logical layout change."""

    def edges(t: Any, src: tuple, dst: Dims) -> float:
        dims, partial = src
        return edge_time(
            t, (expand(dims, axes), tuple(a for g in partial for a in axes[g])), expand(dst, axes)
        )

    return edges


def to_physical(nodes: list, axes: dict[str, tuple[str, ...]]) -> list:
    """The nodes with every strategy's layouts in physical axes (what apply() pins)."""

    def strategy(s: Any) -> Any:
        return dataclasses.replace(
            s,
            wants=tuple(expand(w, axes) for w in s.wants),
            gives=tuple(
                (expand(d, axes), tuple(a for g in p for a in axes[g])) for d, p in s.gives
            ),
        )

    return [dataclasses.replace(n, strategies=[strategy(s) for s in n.strategies]) for n in nodes]
