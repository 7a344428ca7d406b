"""Varying manual axes of a shard_map body (JAX's check_vma): which mesh axes each value may
differ over, read off the traced body graph.

A param varies over the axes its in_spec mentions; psum/pmax/pmin make a value the same on
every device of their axes (all_gather does not count: its result keeps the operand's axes,
as in JAX); psum_scatter, all_to_all, ppermute and axis_index make it vary;
pvary adds axes; any other op varies where its operands do. Two mistakes are caught, with
JAX's wording: an out_spec that leaves out an axis the value varies over (replication that
cannot be inferred), and a scan/while carry whose output varies over more axes than its input.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from spmd.errors import ShardingError
from spmd.ir.graph import Graph, Op

Axes = frozenset[str]


def body_varying(
    graph: Graph,
    param_axes: Sequence[Axes],
    marks: dict[int, Axes],
) -> list[Axes]:
    """The varying axes of each result of `graph`, given those of its params."""
    env = ops_varying(graph.ops, dict(zip(graph.params, param_axes)), marks)
    return [env.get(r, frozenset()) for r in graph.results]


def ops_varying(
    ops: Sequence[Op],
    env: dict[int, Axes],
    marks: dict[int, Axes],
) -> dict[int, Axes]:
    """The varying axes of every value `ops` define, given those of the values in `env`."""
    env = dict(env)
    for op in ops:
        outs = _op_varying(op, [env.get(v, frozenset()) for v in op.inputs], marks)
        for vid, axes in zip(op.outputs, outs):
            env[vid] = axes | marks.get(vid, frozenset())
    return env


def _op_varying(op: Op, ins: list[Axes], marks: dict[int, Axes]) -> list[Axes]:
    rule = RULES.get(op.name)
    if rule is not None:
        return rule(op, ins, marks)
    joined = frozenset().union(*ins) if ins else frozenset()
    return [joined] * len(op.outputs)


def _axes(op: Op, ins: list[Axes]) -> tuple[Axes, Axes]:
    """(the axes the operands vary over, the op's own axes)."""
    return frozenset().union(*ins) if ins else frozenset(), frozenset(op.attrs.get("axes") or ())


def _invariant(op: Op, ins: list[Axes], marks: dict[int, Axes]) -> list[Axes]:
    joined, axes = _axes(op, ins)
    return [joined - axes] * len(op.outputs)


def _varying(op: Op, ins: list[Axes], marks: dict[int, Axes]) -> list[Axes]:
    joined, axes = _axes(op, ins)
    return [joined | axes] * len(op.outputs)


def _scan(op: Op, ins: list[Axes], marks: dict[int, Axes]) -> list[Axes]:
    a = op.attrs
    return _loop_varying(op, ins, marks, a["body"], a["num_consts"], a["num_carry"], "scan")


def _while(op: Op, ins: list[Axes], marks: dict[int, Axes]) -> list[Axes]:
    nc = op.attrs["cond_num_consts"]
    nb = op.attrs["body_num_consts"]
    carry = ins[nc + nb :]
    body_ins = ins[nc : nc + nb]
    return _carry_fixpoint(op.attrs["body_graph"], body_ins, carry, marks, len(carry), "while_loop")


def _cond(op: Op, ins: list[Axes], marks: dict[int, Axes]) -> list[Axes]:
    outs = [
        frozenset().union(*v)
        for v in zip(*(body_varying(g, ins[1:], marks) for g in op.attrs["branches"]))
    ]
    return [a | ins[0] for a in outs]


def _loop_varying(
    op: Op,
    ins: list[Axes],
    marks: dict[int, Axes],
    body: Graph,
    num_consts: int,
    num_carry: int,
    what: str,
) -> list[Axes]:
    consts = ins[:num_consts]
    carry = ins[num_consts : num_consts + num_carry]
    xs = ins[num_consts + num_carry :]
    n_out = len(op.outputs)
    outs = body_varying(body, consts + carry + xs, marks)
    _check_carry(carry, outs[:num_carry], what)
    return carry + outs[num_carry:n_out]


def _carry_fixpoint(
    body: Graph, consts: list[Axes], carry: list[Axes], marks: dict[int, Axes], n: int, what: str
) -> list[Axes]:
    outs = body_varying(body, consts + carry, marks)
    _check_carry(carry, outs[:n], what)
    return carry


def _check_carry(carry_in: list[Axes], carry_out: list[Axes], what: str) -> None:
    for i, (before, after) in enumerate(zip(carry_in, carry_out)):
        extra = after - before
        if extra:
            names = tuple(sorted(extra))
            raise ShardingError(
                f"{what} body function carry input and carry output must have equal types, "
                f"but carry component {i} varies over the manual axes {names!r} in the "
                f"output and over {tuple(sorted(before))!r} in the input",
                hint=f"apply spmd.lax.pvary(init, {names!r}) to the initial carry value "
                f"of component {i}",
            )


def check_out_specs(
    result_axes: Sequence[Axes],
    unmentioned: Sequence[tuple[str, ...]],
    out_specs: Sequence[object],
    mesh_names: tuple[str, ...],
    mesh_sizes: tuple[int, ...],
    fun_name: str,
) -> None:
    """Each output must not vary over an axis its out_spec leaves out (it would be
    replicated there, and which device's block to return cannot be inferred)."""
    for j, (varies, left_out, spec) in enumerate(zip(result_axes, unmentioned, out_specs)):
        bad = sorted(set(left_out) & varies)
        if not bad:
            continue
        raise ShardingError(
            f"shard_map applied to the function {fun_name!r} was given out_specs which require "
            f"replication which can't be statically inferred given the mesh {mesh_sizes} with "
            f"axis names {mesh_names!r}: out_specs entry {j} is {spec!r}, which implies that "
            f"the output is replicated across mesh axes {tuple(bad)!r}, but it varies over "
            "them",
            hint=f"shard the output over {tuple(bad)!r} in out_specs, reduce it with "
            f"spmd.lax.psum(..., {tuple(bad)!r}), or pass check_vma=False if it is "
            "replicated",
        )


# The ops whose results vary otherwise than where their operands do (JAX's per-primitive
# vma rules): psum/pmax/pmin make a value the same over their axes; the other collectives
# and axis_index make it vary over them; control flow runs its sub-graphs.
Rule = Callable[[Op, list[Axes], dict[int, Axes]], list[Axes]]
RULES: dict[str, Rule] = {
    "all_reduce": _invariant,
    "reduce_scatter": _varying,
    "all_to_all": _varying,
    "collective_permute": _varying,
    "axis_index": _varying,
    "all_gather": _varying,
    "scan": _scan,
    "while_loop": _while,
    "cond": _cond,
}
