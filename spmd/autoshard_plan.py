"""An autoshard solution made concrete: every op result pinned by a sharding constraint (so the
partitioner does what the solver priced), the shardings per argument and result, the compiled
program's SimReport, and a line of explanation per large tensor."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from spmd.autoshard_cost import describe_bytes, plan_rows, sim_options
from spmd.autoshard_group import own_layout
from spmd.autoshard_ilp import Dims, Solution
from spmd.ir.graph import Attrs, Graph, Op, fresh_id
from spmd.mesh import Mesh

LARGE = 0.01  # tensors above this share of all bytes get a line of explanation


@dataclass
class Plan:
    """What autoshard chose: shardings per argument and result (pytrees like f's), the
    sharding constraint it put on every op result, the simulated report, and why."""

    in_shardings: tuple[Any, ...]
    out_shardings: Any
    constraints: list[tuple[str, str, Any]]  # (op, user line, sharding)
    report: Any
    explanation: list[str]
    search_s: float
    problem: dict[str, int]
    graph: Graph = field(repr=False)
    flat_in: tuple[Any, ...] = field(repr=False, default=())
    flat_out: tuple[Any, ...] = field(repr=False, default=())
    out_tree: Any = field(repr=False, default=None)
    search_cpu_s: float = 0.0  # CPU seconds of this process (HiGHS's threads included)
    ties: dict[int, int] = field(default_factory=dict)  # result leaf -> donated argument leaf

    def __str__(self) -> str:
        size = ", ".join(f"{k} {v}" for k, v in self.problem.items())
        head = [
            (
                f"autoshard plan: searched in {self.search_s:.2f} s, "
                f"{self.search_cpu_s:.2f} s of CPU ({size})"
            ),
            *plan_rows(self.report),
        ]
        return "\n".join(head + ["  " + line for line in self.explanation])


def apply(graph: Graph, mesh: Mesh, sol: Solution, donated: tuple[bool, ...] = ()) -> Plan:
    """The chosen layouts as shardings, the graph with constraints, its compiled SimReport
    (donated parameters' buffers reused, as jit's donate_argnums)."""
    from spmd import dispatch
    from spmd.named_sharding import NamedSharding

    def sharding(d: Dims) -> Any:
        return NamedSharding(mesh, dispatch.user_spec(d))

    chosen = {
        v: s.gives[j]
        for node, k in zip(sol.nodes, sol.choice)
        for s in [node.strategies[k]]
        for j, v in enumerate(node.outputs)
    }
    flat_in = tuple(sharding(chosen[v][0]) for v in graph.params)
    flat_out = tuple(sharding(chosen[v][0]) for v in graph.results)
    constrained, constraints = constrain(graph, mesh, sol, chosen)
    donate = tuple(donated) or (False,) * len(flat_in)
    executable = dispatch.compile_graph(constrained, flat_in, flat_out, donate)
    options = {"donate": donate} if any(donate) else {}
    report = executable.simulate(check_memory=False, **options, **sim_options(mesh))
    problem = {
        "nodes": len(sol.nodes),
        "strategies": sol.strategies,
        "edges": sol.edges,
        "variables": sol.variables,
        "constraints": sol.constraints,
    }
    bodies = [node.body for node in sol.nodes if node.body is not None]
    if bodies:  # each scan body's own program, solved once
        problem["scan body nodes"] = sum(len(b.nodes) for b in bodies)
        problem["scan body variables"] = sum(b.variables for b in bodies)
    return Plan(
        flat_in,
        flat_out,
        constraints,
        report,
        explain(graph, sol, chosen),
        sol.search_s,
        problem,
        constrained,
        flat_in,
        flat_out,
    )


def constrain(
    graph: Graph,
    mesh: Mesh,
    sol: Solution,
    chosen: dict[int, tuple],
) -> tuple[Graph, list[tuple[str, str, Any]]]:
    """graph with a sharding constraint on every op result; a scan's operands are pinned to
    the layouts its body was solved for (the partitioner runs a body with the layouts its
    operands have) and its body is constrained the same way."""
    from spmd import dispatch
    from spmd.named_sharding import NamedSharding, ShardingAttr

    pins = pinned(sol, chosen)
    bodies = {
        id(node.op): (node.body, node.strategies[k])
        for node, k in zip(sol.nodes, sol.choice)
        if node.body is not None
    }
    rename: dict[int, int] = {}
    ops: list[Op] = []
    constraints: list[tuple[str, str, Any]] = []

    def pin(v: int, t: Any, dims: Dims, name: str, loc: str) -> int:
        new = fresh_id()
        attr = ShardingAttr(tuple(mesh.axis_names), tuple(mesh.axis_sizes), dims)
        ops.append(Op("sharding_constraint", (v,), (new,), (t,), Attrs(sharding=attr), loc))
        constraints.append((name, loc, NamedSharding(mesh, dispatch.user_spec(dims))))
        return new

    wants = operand_wants(sol)
    have = {**{v: chosen[v][0] for v in graph.params if v in chosen}, **pins}
    moved: dict[tuple[int, Dims], int] = {}  # one reshard per (value, layout), as priced

    def operand(v: int, want: Dims | None, loc: str) -> int:
        if want is None or not want or have.get(v, want) == want:
            return rename.get(v, v)
        if (v, want) not in moved:
            moved[v, want] = pin(rename.get(v, v), graph.types[v], want, "operand", loc)
        return moved[v, want]

    for original in graph.ops:
        op = _renamed(original, rename) if rename else original
        if id(original) in wants:  # the operands in the layouts the strategy was priced for
            w = wants[id(original)]
            op = Op(
                op.name,
                tuple(operand(v, w.get(v), op.loc) for v in original.inputs),
                op.outputs,
                op.types,
                op.attrs,
                op.loc,
            )
        if id(original) in bodies:
            body, strategy = bodies[id(original)]
            inner = {
                v: s.gives[j]
                for node, k in zip(body.nodes, body.choice)
                for s in [node.strategies[k]]
                for j, v in enumerate(node.outputs)
            }
            new_body, inside = constrain(original.attrs["body"], mesh, body, inner)
            inputs = tuple(
                pin(v, graph.types[v], d, "scan operand", op.loc)
                for v, d in zip(op.inputs, strategy.wants)
            )
            op = Op(
                op.name, inputs, op.outputs, op.types, Attrs({**op.attrs, "body": new_body}), op.loc
            )
            constraints += inside
        ops.append(op)
        for v, t in zip(op.outputs, op.types):
            if v in pins and not own_layout(op):
                rename[v] = pin(v, t, pins[v], op.name, op.loc)
    results = tuple(rename.get(v, v) for v in graph.results)
    return graph.replace(ops=tuple(ops), results=results), constraints


def pinned(sol: Solution, chosen: dict[int, tuple]) -> dict[int, Dims]:
    """The layout to pin each op result to, so the partitioner does what the solver priced:
    the one its producer's strategy gives; a pending sum is resolved into the layout its
    consumers want when they agree (a reduce-scatter where the solver priced one)."""
    wanted: dict[int, set[Dims]] = {}
    for node, k in zip(sol.nodes, sol.choice):
        for v, want in zip(node.inputs, node.strategies[k].wants):
            wanted.setdefault(v, set()).add(want)
    pins = {}
    for node in sol.nodes:
        if node.op is None:
            continue
        for v in node.outputs:
            dims, partial = chosen[v]
            wants = wanted.get(v, set())
            pins[v] = next(iter(wants)) if partial and len(wants) == 1 else dims
    return pins


def operand_wants(sol: Solution) -> dict[int, dict[int, Dims]]:
    """Per op (by id) the layout its node's chosen strategy wants each operand in: the
    partitioner then runs the op the way the solver priced it (left to itself it may pick
    another factor assignment: a contraction over a dim the solver kept whole)."""
    out: dict[int, dict[int, Dims]] = {}
    for node, k in zip(sol.nodes, sol.choice):
        if node.op is None or node.body is not None:
            continue
        for v, want in zip(node.inputs, node.strategies[k].wants):
            for member in node.members:
                if v in member.inputs and not own_layout(member):
                    out.setdefault(id(member), {})[v] = want
    return out


def _renamed(op: Op, rename: dict[int, int]) -> Op:
    return Op(
        op.name, tuple(rename.get(v, v) for v in op.inputs), op.outputs, op.types, op.attrs, op.loc
    )


def explain(graph: Graph, sol: Solution, chosen: dict[int, tuple]) -> list[str]:
    """A line per large tensor: its layout, the strategy that made it, the time it moves."""
    types = graph.types
    total = sum(t.nbytes for t in types.values()) or 1
    lines = []
    for node, k in zip(sol.nodes, sol.choice):
        strat = node.strategies[k]
        for v in node.outputs[-1:] if len(node.members) > 1 else node.outputs:
            t = types[v]
            if t.nbytes < LARGE * total:
                continue
            dims, partial = chosen[v]
            what = "argument" if node.op is None else f"{node.name} at {node.op.loc or '?'}"
            why = f"factors {strat.label}" if node.op is not None else "its consumers' layout"
            pend = f", pending sum over {'+'.join(partial)} resolved downstream" if partial else ""
            lines.append(
                f"{what} {t.dtype}{list(t.shape)} ({describe_bytes(t.nbytes)}): "
                f"{_spec(dims)} by {why}{pend}"
            )
    return lines


def _spec(dims: Dims) -> str:
    return "P(" + ", ".join("+".join(a) if a else "None" for a in dims) + ")"
