"""The edges of the auto-sharding integer program: what moving one value to its consumers costs.

The partitioner reshards a value once per layout it is wanted in and hands that copy to every
consumer that wants it (partitioner/partition.py, reshard_cached), so a layout change several
consumers share is priced once: per consumer the product x[p, g] * x[c, m] is linearised by a
continuous e_c[g, m] whose marginals are the two nodes' choices (Alpa's form; a side with one
strategy needs none: the other side's x is the product), and a pair two or more consumers may
take gets one y[g, m] >= e_c[g, m] for each of them that carries its time. In an integer
solution e_c is the product, so y is the OR of the consumers' choices: exact, one solve.
The program passes `gathers` as `shared`: only gathers and pending sums get a y.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Rows = list[tuple[list[int], list[float], float, float]]
Cols = dict[Any, list[int]]  # a layout -> the strategy columns that give or want it


def gathers(given: Any, wanted: Any) -> bool:
    """A pending sum resolved, or axes gathered with no new split: the collectives a shared
    reshard saves (FSDP's weight gather for forward and backward); other changes (all-to-alls,
    slices) are paid per consumer: pricing those once too tripled HiGHS's time on the GPT
    step (46k rows instead of 10k) and changed no plan."""
    dims, partial = given
    return bool(partial) or all(set(w) <= set(d) for d, w in zip(dims, wanted))


def price_value(
    given: Cols,
    consumers: list[Cols],
    time_of: Callable[[Any, Any], float],
    cost: list[float],
    rows: Rows,
    n: int,
    shared: Callable[[Any, Any], bool] = lambda given, wanted: True,
    charged: list[tuple[int, float]] | None = None,
) -> int:
    """Add the edges from one producer's layouts (given) to each consumer's wanted layouts;
    a pair `shared` accepts is paid once; returns the new variable count. `charged`, where
    given, receives (column, seconds) for each gather's charge (spmd/autoshard_overlap.py)."""
    times: dict[tuple, float] = {}
    terms: dict[tuple, list[list[int]]] = {}  # layout pair -> per consumer, cols summing to e_c
    for wanted in consumers:
        pairs = [(g, w) for g in given for w in wanted]
        for pair in pairs:
            if pair not in times:
                times[pair] = time_of(*pair)
        if len(given) == 1 or len(wanted) == 1:  # the product is the other side's choice
            for g, w in pairs:
                terms.setdefault((g, w), []).append(wanted[w] if len(given) == 1 else given[g])
            continue
        index = {pair: n + m for m, pair in enumerate(pairs)}
        cost += [0.0] * len(pairs)
        for side, classes in ((0, given), (1, wanted)):
            for key, cols in classes.items():
                e = [index[pair] for pair in pairs if pair[side] == key]
                rows.append((e + cols, [1.0] * len(e) + [-1.0] * len(cols), 0.0, 0.0))
        n += len(pairs)
        for pair in pairs:
            terms.setdefault(pair, []).append([index[pair]])
    for pair, sums in terms.items():
        t = times[pair]
        if t <= 0.0:
            continue
        log = charged if charged is not None and gathers(*pair) else []
        if len(sums) == 1 or not shared(*pair):  # each consumer's own e (or x) pays
            for cols in sums:
                for col in cols:
                    cost[col] += t
                    log.append((col, t))
            continue
        cost.append(t)  # y: paid once, whichever consumers take the pair
        log.append((n, t))
        for cols in sums:
            rows.append(([n, *cols], [1.0] + [-1.0] * len(cols), 0.0, float("inf")))
        n += 1
    return n
