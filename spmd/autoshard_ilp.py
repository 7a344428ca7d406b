"""The auto-sharding search: a strategy per op from its factor rule, edges priced by the
resharding planner's bytes, solved as one integer program (scipy.optimize.milp, HiGHS).

Variables: x[n, s] = 1 when node n (a parameter, an op, a pointwise chain or a scan) takes
strategy s (which factor each mesh axis shards, or none). An edge (a value from its producer
to one consumer) costs the time to reshard the producer's layout (pending sum included)
into the layout the consumer's strategy wants; the product x[p, s] * x[c, t] is linearised
per pair of distinct layouts (l given, m wanted) by a continuous e[l, m] whose marginals are
the choices: sum_m e[l, m] = a[l], sum_l e[l, m] = b[m], with a, b sums of x (Alpa's form;
its LP relaxation is integral on trees, so HiGHS mostly stops at the root); a gather or a
pending sum several consumers share is paid once (spmd/autoshard_edges.py). Imports nothing
of the pipeline: the costs come in as functions (spmd/autoshard_cost.py).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from spmd.autoshard_cost import is_contraction, is_counted_loop
from spmd.autoshard_edges import gathers, price_value
from spmd.autoshard_group import (
    group_inputs,
    group_strategies,
    groups,
    own_layout,
    pointwise,
    undominated,
)
from spmd.autoshard_overlap import hide_argument_gathers
from spmd.autoshard_ties import tie_rows
from spmd.ir.graph import Graph, Op
from spmd.ir.types import TensorType
from spmd.ops import REGISTRY

Dims = tuple[tuple[str, ...], ...]
TILE = 128  # MXU tile the matrix dims of a contraction are padded to, unless rates say
TIE = 0.01  # share of an HBM pass that prices an argument's local bytes
GAP = 0.01  # HiGHS stops at a plan proven within 1% of the optimum the model prices
US = 1e6  # costs go to HiGHS in microseconds: in seconds a small program's are under its
# absolute tolerances (1e-7) and it took 25 s on a 4x8 GPT step it now proves in 1 s


@dataclass(frozen=True)
class Strategy:
    """One way to run a node: the layouts it wants for its operands and gives its results."""

    wants: tuple[Dims, ...]
    gives: tuple[tuple[Dims, tuple[str, ...]], ...]  # (dims, pending-sum axes) per result
    cost_s: float
    memory: float
    label: str


@dataclass
class Node:
    """A parameter (op is None) or a top-level op, with its candidate strategies."""

    name: str
    op: Op | None  # a group's last op
    outputs: tuple[int, ...]
    strategies: list[Strategy]
    inputs: tuple[int, ...] = ()  # what strategy.wants lays out, in order
    members: tuple[Op, ...] = ()  # the ops this node runs (a pointwise chain has several)
    body: Solution | None = None  # a scan's body, solved once (spmd/autoshard_scan.py)


@dataclass
class Solution:
    """The solver's choice per node and what the search cost."""

    nodes: list[Node]
    choice: list[int]
    objective_s: float
    variables: int
    constraints: int
    strategies: int
    edges: int
    search_s: float
    status: str
    notes: list[str] = field(default_factory=list)


def layouts(shape: tuple[int, ...], names: tuple[str, ...], sizes: tuple[int, ...]) -> list[Dims]:
    """Every way to put each mesh axis on one dim (or none) that splits that dim evenly."""
    out: list[Dims] = []
    for assign in itertools.product(range(-1, len(shape)), repeat=len(names)):
        dims = [tuple(a for a, d in zip(names, assign) if d == i) for i in range(len(shape))]
        ok = all(
            n % math.prod(sizes[names.index(a)] for a in axes) == 0 and (n > 1 or not axes)
            for n, axes in zip(shape, dims)
        )
        if ok:
            out.append(tuple(dims))
    return out


def local_bytes(t: TensorType, dims: Dims, axis_size: dict[str, int]) -> float:
    return t.nbytes / math.prod(axis_size[a] for d in dims for a in d)


def op_strategies(
    op: Op,
    types: dict[int, TensorType],
    names: tuple[str, ...],
    sizes: tuple[int, ...],
    rates: dict[str, float],
) -> list[Strategy]:
    """Each assignment of mesh axes to the op's factors that splits every dim evenly."""
    in_types = [types[v] for v in op.inputs]
    f = None if own_layout(op) else REGISTRY[op.name].factors(*in_types, **op.attrs)
    axis_size = dict(zip(names, sizes))
    out_types = list(op.types)
    if f is None:  # no factor rule: run replicated (documented limit of this first version)
        rep = Strategy(
            tuple(((),) * t.ndim for t in in_types),
            tuple((((),) * t.ndim, ()) for t in out_types),
            _op_time(op, in_types, out_types, {}, axis_size, rates, None),
            0.0,
            "replicated",
        )
        return [rep]
    extent: dict[str, int] = {}
    for fdims, t in zip(f.operands + f.results, in_types + out_types):
        for factor, n in zip(fdims, t.shape):
            if factor is not None and n > 1:
                extent[factor] = n
    factors = [
        x
        for x in sorted(extent)
        if x not in f.blocked and not (x in f.reduce and f.reduce_kind != "sum")
    ]
    found: list[Strategy] = []
    for assign in itertools.product([None, *factors], repeat=len(names)):
        fa = {x: tuple(a for a, y in zip(names, assign) if y == x) for x in factors}
        fa = {x: axes for x, axes in fa.items() if axes}
        if any(extent[x] % math.prod(axis_size[a] for a in axes) for x, axes in fa.items()):
            continue
        if f.even_split and any(x not in f.operands[0] for x in fa):
            continue  # only an operand factor may be sharded (reshape)
        wants = tuple(_dims(fd, fa, t.shape) for fd, t in zip(f.operands, in_types))
        partial = tuple(a for a in names if any(a in fa.get(x, ()) for x in f.reduce))
        gives = tuple((_dims(fd, fa, t.shape), partial) for fd, t in zip(f.results, out_types))
        memory = sum(local_bytes(t, d, axis_size) for t, (d, _) in zip(out_types, gives))
        cost = _op_time(op, in_types, out_types, fa, axis_size, rates, f)
        label = ",".join(f"{x}:{'+'.join(axes)}" for x, axes in sorted(fa.items())) or "replicated"
        found.append(Strategy(wants, gives, cost, memory, label))
    return found


def _dims(
    fdims: tuple[str | None, ...], fa: dict[str, tuple[str, ...]], shape: tuple[int, ...]
) -> Dims:
    return tuple(fa.get(x, ()) if x is not None and n > 1 else () for x, n in zip(fdims, shape))


def _op_time(
    op: Op,
    in_types: list[TensorType],
    out_types: list[TensorType],
    fa: dict[str, tuple[str, ...]],
    axis_size: dict[str, int],
    rates: dict[str, float],
    f: object,
) -> float:
    """A contraction is priced by its FLOPs at the chip's rate, anything else by the bytes
    it touches at memory bandwidth; both divided by the shards the strategy makes."""
    shards = math.prod(axis_size[a] for axes in fa.values() for a in axes)
    if is_contraction(op) and f is not None:
        extent: dict[str, int] = {}
        for fd, t in zip(f.operands + f.results, in_types + out_types):  # type: ignore[attr-defined]
            extent.update({x: n for x, n in zip(fd, t.shape) if x is not None})
        # local extents; as the simulator's matmul unit: M (lhs free), N (rhs free) and K
        # (contracted) each a product, each padded to the systolic tile, batch not padded
        local = {
            x: -(-n // math.prod(axis_size[a] for a in fa.get(x, ()))) for x, n in extent.items()
        }
        lhs, rhs = set(f.operands[0]), set(f.operands[1])  # type: ignore[attr-defined]
        k_set = set(f.reduce)  # type: ignore[attr-defined]
        tile = int(rates.get("tile", TILE))
        batch = (lhs & rhs) - k_set
        mnk = [lhs - batch - k_set, rhs - batch - k_set, k_set]
        work = math.prod(local[x] for x in batch - {None})
        for g in mnk:
            n = math.prod(local[x] for x in g - {None})
            work *= -(-n // tile) * tile
        touched = sum(t.nbytes for t in in_types + out_types) / shards
        return max(2.0 * work / rates["flops"], touched / rates["hbm"])
    touched = sum(t.nbytes for t in in_types + out_types)
    return touched / shards / rates["hbm"]


def build_nodes(
    graph: Graph,
    names: tuple[str, ...],
    sizes: tuple[int, ...],
    rates: dict[str, float],
    fixed: dict[int, Dims],
    edge_time: Callable[..., float] | None = None,
    memory_limit: float | None = None,
    tie: float = TIE,
) -> list[Node]:
    """Parameters (all layouts, or the one the user fixed) then every top-level op, a
    pointwise chain as one node (spmd/autoshard_group.py), a scan with its body solved once
    where edge_time is given (spmd/autoshard_scan.py)."""
    axis_size = dict(zip(names, sizes))
    nodes: list[Node] = []
    for i, (v, t) in enumerate(zip(graph.params, graph.param_types)):
        options = [fixed[v]] if v in fixed else layouts(t.shape, names, sizes)
        # a tie-break of a hundredth of an HBM pass over the local bytes: where slicing an
        # argument is free the program should still receive it sliced (less to hold, nothing
        # to slice); it is no cost of the step (the simulator charges none), so it stays small
        strategies = [
            Strategy(
                (),
                ((d, ()),),
                tie * local_bytes(t, d, axis_size) / rates["hbm"],
                local_bytes(t, d, axis_size),
                _spec(d),
            )
            for d in options
        ]
        nodes.append(Node(f"arg{i}", None, (v,), strategies))
    types = graph.types
    chains = groups(graph)
    readers: dict[int, set[int]] = {v: {-1} for v in graph.results}
    for k, ops in enumerate(chains):
        for o in ops:
            for v in o.inputs:
                readers.setdefault(v, set()).add(k)
    for k, ops in enumerate(chains):
        op = ops[-1]
        if is_counted_loop(op) and edge_time is not None:
            from spmd.autoshard_scan import scan_node

            strategy, body = scan_node(
                op, names, sizes, rates, edge_time, build_nodes, solve, Strategy, memory_limit
            )
            nodes.append(Node("scan", op, op.outputs, [strategy], op.inputs, (op,), body))
            continue
        if len(ops) == 1 and not pointwise(op, types):
            strategies = undominated(op_strategies(op, types, names, sizes, rates))
            nodes.append(Node(op.name, op, op.outputs, strategies, op.inputs, (op,)))
            continue
        # what the chain's fusion writes: results and values other nodes read
        escapes = {v for o in ops for v in o.outputs if readers.get(v, set()) - {k}}
        strategies = group_strategies(ops, types, names, sizes, rates, layouts, Strategy, escapes)
        nodes.append(
            Node(
                f"{len(ops)} pointwise ops",
                op,
                tuple(v for o in ops for v in o.outputs),
                strategies,
                group_inputs(ops),
                tuple(ops),
            )
        )
    return nodes


def _spec(d: Dims) -> str:
    return "P(" + ", ".join("+".join(a) if a else "None" for a in d) + ")"


def solve(
    graph: Graph,
    nodes: list[Node],
    edge_time: Callable[[TensorType, tuple, Dims], float],
    memory_limit: float | None,
    memory_of: Callable[[Node], bool],
    time_limit_s: float = 60.0,
    hide_gathers: bool = True,
    ties: tuple[tuple[int, int], ...] = (),
) -> Solution:
    """Build and solve the integer program; raises RuntimeError when HiGHS finds nothing.
    hide_gathers: take back argument gathers the schedule hides (spmd/autoshard_overlap.py);
    a scan body's parameters are not there at time 0. ties: (result, argument) values whose
    layouts must be equal (spmd/autoshard_ties.py)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix

    start = time.perf_counter()
    offset: list[int] = []
    n = 0
    for node in nodes:
        offset.append(n)
        n += len(node.strategies)
    where = {v: (k, j) for k, node in enumerate(nodes) for j, v in enumerate(node.outputs)}
    cost = [s.cost_s for node in nodes for s in node.strategies]
    rows: list[tuple[list[int], list[float], float, float]] = []
    for k, node in enumerate(nodes):  # one strategy per node
        rows.append(
            (
                list(range(offset[k], offset[k] + len(node.strategies))),
                [1.0] * len(node.strategies),
                1.0,
                1.0,
            )
        )
    dropped = tie_rows(ties, nodes, offset, where, rows)
    edges = 0
    types = graph.types
    users: dict[int, list[tuple[int, int]]] = {}
    charged: dict[int, list[tuple[int, float]]] = {}
    for k, node in enumerate(nodes):
        for i, v in enumerate(node.inputs):  # a scan body's carry param reads its result
            if v in where:
                users.setdefault(v, []).append((k, i))
    for v in [*users, *(v for v in graph.results if v in where)]:
        p, j = where[v]
        given: dict[tuple, list[int]] = {}
        for s, strat in enumerate(nodes[p].strategies):
            given.setdefault(strat.gives[j], []).append(offset[p] + s)
        if v not in users:  # a result: its pending sums are resolved in the layout it has
            for spec, cols in given.items():
                t = edge_time(types[v], spec, spec[0]) if spec[1] else 0.0
                for c in cols:
                    cost[c] += t
            continue
        consumers = []  # a layout change several consumers share is priced once
        for c, i in users.pop(v):
            edges += 1
            wanted: dict[Dims, list[int]] = {}
            for s, strat in enumerate(nodes[c].strategies):
                wanted.setdefault(strat.wants[i], []).append(offset[c] + s)
            consumers.append(wanted)
        log = charged.setdefault(v, []) if nodes[p].op is None and hide_gathers else None
        n = price_value(
            given,
            consumers,
            lambda g, w, t=types[v]: edge_time(t, g, w),
            cost,
            rows,
            n,
            gathers,
            log,
        )
    upper: dict[int, float] = {}
    n = hide_argument_gathers(nodes, offset, charged, cost, rows, n, upper)
    n_x = offset[-1] + len(nodes[-1].strategies) if nodes else 0
    if memory_limit is not None:
        cols = [
            offset[k] + s
            for k, node in enumerate(nodes)
            if memory_of(node)
            for s in range(len(node.strategies))
        ]
        mem = [
            node.strategies[s].memory
            for node in nodes
            if memory_of(node)
            for s in range(len(node.strategies))
        ]
        rows.append((cols, mem, 0.0, float(memory_limit)))
    r_idx, c_idx, vals = [], [], []
    for r, (cols, coefs, _, _) in enumerate(rows):
        r_idx += [r] * len(cols)
        c_idx += cols
        vals += coefs
    a = coo_matrix((vals, (r_idx, c_idx)), shape=(len(rows), n)).tocsr()
    lo = np.array([row[2] for row in rows])
    hi = np.array([row[3] for row in rows])
    integrality = np.zeros(n)
    integrality[:n_x] = 1
    high = np.ones(n)
    high[list(upper)] = list(upper.values())
    res = milp(
        np.array(cost) * US,
        constraints=LinearConstraint(a, lo, hi),
        integrality=integrality,
        bounds=Bounds(np.zeros(n), high),
        options={"time_limit": time_limit_s, "disp": False, "mip_rel_gap": GAP},
    )
    if res.x is None:
        raise RuntimeError(res.message)
    choice = [
        int(np.argmax(res.x[offset[k] : offset[k] + len(node.strategies)]))
        for k, node in enumerate(nodes)
    ]
    return Solution(
        nodes,
        choice,
        float(res.fun) / US,
        n,
        len(rows),
        n_x,
        edges,
        time.perf_counter() - start,
        str(res.message),
        [f"result %{r} not tied to argument %{a}: they share no layout" for r, a in dropped],
    )
