"""Automatic sharding: `autoshard(f, *args, mesh=...)` picks every argument's, result's and op
result's layout by an integer program over the ops' factor rules, priced by the resharding
planner's steps and the mesh's simulator (spmd/autoshard_ilp.py, autoshard_cost.py), pointwise
chains grouped (autoshard_group.py), a scan's body solved once (autoshard_scan.py); every op
result is then pinned by a sharding constraint, so the partitioner does what was priced.

`spmd.jit(f, in_shardings=spmd.AUTO)` plans on the mesh its arguments are on. Donated
arguments (donate_argnums) come back in their layout: a result that aliases one (same shape
and dtype, XLA's rule) is laid out as it by a constraint of the program (autoshard_ties.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from spmd.autoshard_cost import (
    calibrate,
    describe_bytes,
    edge_time,
    is_contraction,
    is_counted_loop,
)
from spmd.autoshard_ilp import Dims, Node, build_nodes, solve
from spmd.autoshard_plan import Plan, apply
from spmd.autoshard_ties import donated_ties
from spmd.errors import ShardingError
from spmd.ir.graph import Graph
from spmd.mesh import Mesh
from spmd.tree import tree_flatten, tree_unflatten


class _Auto:
    def __repr__(self) -> str:
        return "AUTO"


AUTO: Any = _Auto()  # jit(f, in_shardings=AUTO): let autoshard choose


def autoshard(
    f: Callable[..., Any],
    *args: Any,
    mesh: Mesh,
    memory_limit: float | None = None,
    objective: str = "step_time",
    time_limit_s: float = 60.0,
    donate_argnums: int | tuple[int, ...] | None = None,
) -> Plan:
    """Choose the layouts of f's arguments, results and contractions on `mesh`.

    args: arrays or ShapeDtypeStructs (a sharding already on one is kept as given).
    memory_limit: bytes per device the parameters and contraction results may take.
    donate_argnums: as jit's (default: those of f when it is a jitted function). Each result
    takes the first donated argument leaf left with its shape and dtype (XLA's aliasing) and
    gets its layout: the integer program makes the two layout choices one, so a training step
    returns its new weights as it takes the old, and pays for that in the plan it picks.
    `plan.ties` maps each tied result leaf to its argument leaf (flat indices).

    >>> plan = autoshard(sgd_step, w, x, mesh=mesh, donate_argnums=0)  # doctest: +SKIP
    >>> plan.out_shardings == plan.in_shardings[0]  # doctest: +SKIP
    True
    """
    from spmd.api import JitFunction, jit

    if objective != "step_time":
        raise ShardingError(
            f"autoshard objective {objective!r} is not supported",
            hint="use objective='step_time' (the only one so far)",
        )
    jitted = f if isinstance(f, JitFunction) else jit(f)
    lowered = jitted.lower(*_abstract(args, mesh))
    leaves, arg_tree = tree_flatten(args)
    g = lowered.graph
    donate = jitted.donate_argnums if donate_argnums is None else donate_argnums
    donated = type(jitted)(
        jitted.fun,
        static_argnums=jitted.static_argnums,
        static_argnames=jitted.static_argnames,
        donate_argnums=donate,
    )._donated_leaves(args, {})
    ties = donated_ties(g.param_types, g.result_types, donated)
    plan = plan_graph(
        g,
        mesh,
        _fixed(g, leaves, mesh),
        memory_limit,
        time_limit_s,
        tuple((g.results[j], g.params[i]) for j, i in ties.items()),
        donated,
    )
    # a tie its sides could not hold (no layout in common) is noted in the explanation
    plan.ties = {j: i for j, i in ties.items() if plan.flat_out[j] == plan.flat_in[i]}
    plan.in_shardings = tuple(tree_unflatten(arg_tree, list(plan.flat_in)))
    plan.out_shardings = tree_unflatten(lowered.out_tree, list(plan.flat_out))
    plan.out_tree = lowered.out_tree
    return plan


def plan_graph(
    graph: Graph,
    mesh: Mesh,
    fixed: dict[int, Dims],
    memory_limit: float | None,
    time_limit_s: float = 60.0,
    ties: tuple[tuple[int, int], ...] = (),
    donated: tuple[bool, ...] = (),
) -> Plan:
    """Solve, apply and simulate; under a memory limit, re-solve tighter while the simulated
    peak exceeds it (the integer program counts parameters and contraction results only).
    ties: (result, argument) values laid out alike; donated: per parameter, simulated as
    jit's donation (its buffer reused)."""
    start, cpu = time.perf_counter(), time.process_time()
    rates = calibrate(mesh)
    names = tuple(mesh.axis_names)

    def edges(t: Any, src: tuple, dst: Dims) -> float:
        return edge_time(mesh, rates, t, src, dst)

    has_scan = any(is_counted_loop(op) for op in graph.ops)
    if len(names) >= 3 and not fixed and not has_scan:
        plan = _coarsened(graph, mesh, rates, edges, memory_limit, time_limit_s, ties, donated)
    else:
        plan = _within_limit(
            graph, mesh, rates, edges, fixed, memory_limit, time_limit_s, has_scan, ties, donated
        )
    plan.search_s = time.perf_counter() - start
    plan.search_cpu_s = time.process_time() - cpu
    return plan


def _within_limit(
    graph: Graph,
    mesh: Mesh,
    rates: dict[str, float],
    edges: Any,
    fixed: dict[int, Dims],
    memory_limit: float | None,
    time_limit_s: float,
    has_scan: bool,
    ties: tuple[tuple[int, int], ...],
    donated: tuple[bool, ...],
) -> Plan:
    """One solve (re-solved tighter while the simulated peak is over memory_limit)."""
    names, sizes = tuple(mesh.axis_names), tuple(mesh.axis_sizes)
    limit = memory_limit
    notes: list[str] = []
    nodes: list[Node] = []
    for _ in range(4):
        try:
            if not nodes or has_scan:  # a scan's body is re-solved under the tighter limit
                nodes = build_nodes(graph, names, sizes, rates, fixed, edges, limit)
            sol = solve(graph, nodes, edges, limit, _counts_memory, time_limit_s, ties=ties)
        except RuntimeError as e:
            raise ShardingError(
                f"autoshard found no plan within memory_limit={memory_limit}: {e}",
                hint="raise memory_limit or use a bigger mesh",
            ) from None
        plan = apply(graph, mesh, sol, donated)
        notes.append(
            f"HiGHS: {sol.status} after {sol.search_s:.1f} s, objective "
            f"{sol.objective_s * 1e3:.3f} ms"
        )
        notes += sol.notes
        peak = plan.report.peak_memory_bytes
        if memory_limit is None or peak <= memory_limit:
            break
        notes.append(f"simulated peak {describe_bytes(peak)} > limit: re-solved tighter")
        limit = (limit or memory_limit) * memory_limit / peak * 0.97
    else:
        raise ShardingError(
            f"autoshard found no plan whose simulated peak fits memory_limit={memory_limit}",
            hint="raise memory_limit or use a bigger mesh",
        )
    plan.explanation = notes + plan.explanation
    return plan


def _coarsened(
    graph: Graph,
    mesh: Mesh,
    rates: dict[str, float],
    edges: Any,
    memory_limit: float | None,
    time_limit_s: float,
    ties: tuple[tuple[int, int], ...],
    donated: tuple[bool, ...],
) -> Plan:
    """A mesh of 3+ axes: solve on each 2-D view (spmd/autoshard_coarse.py), keep the plan
    with the shortest simulated step among those within memory_limit."""
    from spmd.autoshard_coarse import physical_edges, to_physical, views

    best: Plan | None = None
    notes: list[str] = []
    for logical, sizes, axes in views(tuple(mesh.axis_names), tuple(mesh.axis_sizes)):
        ledges = physical_edges(edges, axes)
        nodes = build_nodes(graph, logical, sizes, rates, {}, ledges, memory_limit)
        try:
            sol = solve(graph, nodes, ledges, memory_limit, _counts_memory, time_limit_s, ties=ties)
        except RuntimeError as e:
            notes.append(f"view {' | '.join(logical)}: no plan ({e})")
            continue
        sol.nodes = to_physical(nodes, axes)
        plan = apply(graph, mesh, sol, donated)
        rep = plan.report
        notes.append(
            f"view {' | '.join(logical)}: HiGHS {sol.status} after "
            f"{sol.search_s:.1f} s, simulated {rep.step_time_s * 1e3:.3f} ms"
        )
        notes += sol.notes
        fits = memory_limit is None or rep.peak_memory_bytes <= memory_limit
        if fits and (best is None or rep.step_time_s < best.report.step_time_s):
            best = plan
    if best is None:
        raise ShardingError(
            f"autoshard found no plan within memory_limit={memory_limit} on "
            "any 2-D view of the mesh",
            hint="raise memory_limit",
        )
    best.explanation = notes + best.explanation
    return best


def _counts_memory(node: Node) -> bool:
    return node.op is None or is_contraction(node.op)


def _abstract(args: tuple, mesh: Mesh) -> tuple:
    from spmd.api import ShapeDtypeStruct

    leaves, tree = tree_flatten(args)
    out = []
    for x in leaves:
        if isinstance(x, ShapeDtypeStruct):
            out.append(x)
            continue
        out.append(ShapeDtypeStruct(tuple(x.shape), str(x.dtype)))
    return tuple(tree_unflatten(tree, out))


def _fixed(graph: Graph, leaves: list[Any], mesh: Mesh) -> dict[int, Dims]:
    """Arguments given as ShapeDtypeStructs with a sharding keep it."""
    from spmd.api import ShapeDtypeStruct

    fixed = {}
    for v, t, x in zip(graph.params, graph.param_types, leaves):
        if isinstance(x, ShapeDtypeStruct) and x.sharding is not None:
            fixed[v] = tuple(tuple(d) for d in x.sharding.dim_axes(t.ndim))
    return fixed


def lower_auto(jitted: Any, args: tuple, kwargs: dict) -> Any:
    """jit(f, in_shardings=AUTO).lower(*args): plan on the arguments' mesh, then lower the
    constrained program with the plan's shardings."""
    from spmd.api import Lowered
    from spmd.mesh import current_mesh

    leaves = jitted.dynamic_leaves(args, kwargs)
    meshes = {
        s.mesh
        for x in leaves
        if (s := getattr(x, "sharding", None)) is not None and hasattr(s, "mesh")
    }
    mesh = meshes.pop() if len(meshes) == 1 else current_mesh()
    if mesh is None:
        raise ShardingError(
            "jit(in_shardings=AUTO) needs the arguments on a mesh",
            hint="device_put them on a NamedSharding, or call inside `with mesh:`",
        )
    plan_jit = type(jitted)(
        jitted.fun, static_argnums=jitted.static_argnums, static_argnames=jitted.static_argnames
    )
    if kwargs:
        raise ShardingError(
            "jit(in_shardings=AUTO) takes positional arguments only",
            hint="pass the keyword arguments positionally",
        )
    plan = autoshard(plan_jit, *args, mesh=mesh, donate_argnums=jitted.donate_argnums)
    jitted.last_plan = plan
    return _AutoLowered(
        jitted,
        plan.graph,
        plan.out_tree,
        plan.flat_in,
        plan.flat_out,
        jitted._donated_leaves(args, kwargs),
        Lowered,
    )


def _AutoLowered(
    jitted: Any,
    graph: Graph,
    out_tree: Any,
    flat_in: tuple,
    flat_out: tuple,
    donate: tuple,
    base: type,
) -> Any:
    """A Lowered whose compile keeps the plan's result shardings."""

    class AutoLowered(base):  # type: ignore[misc, valid-type]
        def compile(self) -> Any:
            from spmd import dispatch
            from spmd.api import Compiled

            exe = dispatch.compile_graph(self.graph, self.in_shardings, flat_out, self.donate)
            return Compiled(self, exe)

    return AutoLowered(jitted, graph, out_tree, flat_in, donate)
