"""The IR verifier: SSA form, registered op names and types that match each op's infer.

Errors name the pass that broke the graph, the op, and that op's line in the IR text.
"""

from __future__ import annotations

from spmd.errors import VerifierError
from spmd.ir.graph import Graph, Op, subgraphs
from spmd.ir.printer import op_lines, print_graph
from spmd.ir.types import TensorType


def verify(graph: Graph, pass_name: str | None = None) -> None:
    """Raise VerifierError at the first broken invariant of `graph` (sub-graphs included)."""
    problem = find_problem(graph)
    if problem is None:
        return
    op, message = problem
    text = print_graph(graph)
    where = "after pass " + repr(pass_name) + ": " if pass_name else ""
    if op is None:
        raise VerifierError(f"{where}{message}\n{text}", hint="a pass must keep results defined")
    line = op_lines(graph).get(id(op), 0)
    source = text.split("\n")[line - 1].strip() if line else ""
    raise VerifierError(
        f"{where}op {op.name!r} at line {line} of the IR: {message}\n    {source}",
        op.loc or None,
        "print the graph with spmd.ir.printer.print_graph to see it whole",
    )


def find_problem(graph: Graph) -> tuple[Op | None, str] | None:
    """(op, what is wrong) for the first problem found, or None; op None: the results."""
    from spmd.ops import REGISTRY

    defined: set[int] = set()
    for vid in graph.params:
        if vid in defined:
            return None, f"param %{vid} is declared twice"
        defined.add(vid)
    if len(graph.params) != len(graph.param_types):
        return None, f"{len(graph.params)} params but {len(graph.param_types)} param types"
    for op in graph.ops:
        found = _check_op(op, defined, graph.types, REGISTRY)
        if found is not None:
            return op, found
        for sub in subgraphs(op):
            nested = find_problem(sub)
            if nested is not None:
                return nested[0] or op, nested[1]
        defined.update(op.outputs)
    missing = [v for v in graph.results if v not in defined]
    if missing:
        return None, "results " + ", ".join(f"%{v}" for v in missing) + " are never defined"
    return None


def _check_op(
    op: Op, defined: set[int], types: dict[int, TensorType], registry: dict
) -> str | None:
    opdef = registry.get(op.name)
    if opdef is None:
        return f"unknown op {op.name!r} (not in spmd.ops.REGISTRY)"
    undefined = [v for v in op.inputs if v not in defined]
    if undefined:
        return "uses " + ", ".join(f"%{v}" for v in undefined) + " before it is defined"
    twice = [v for v in op.outputs if v in defined or op.outputs.count(v) > 1]
    if twice:
        return "redefines " + ", ".join(f"%{v}" for v in twice) + " (SSA: one definition each)"
    if len(op.outputs) != len(op.types):
        return f"has {len(op.outputs)} outputs but {len(op.types)} types"
    return _check_types(op, opdef, types)


def _check_types(op: Op, opdef: object, types: dict[int, TensorType]) -> str | None:
    in_types = [types[v] for v in op.inputs]
    try:
        inferred = opdef.infer(*in_types, **op.attrs)  # type: ignore[attr-defined]
    except Exception as err:  # noqa: BLE001  (an infer that rejects its inputs: broken graph)
        return f"its inputs do not type-check: {type(err).__name__}: {err}".split("\n")[0]
    want = inferred if isinstance(inferred, tuple) else (inferred,)
    if tuple(want) != tuple(op.types):
        shown = ", ".join(map(str, op.types))
        expected = ", ".join(map(str, want))
        return f"records type {shown} but its inputs give {expected}"
    return None
